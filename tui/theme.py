"""The console's colours: one theme and one palette of meanings (ok, waiting, failed...),
each readable at WCAG AA (4.5:1) on the backgrounds it is drawn on, and failures marked by
more than colour (bold; underlined without colour, where reverse video is the cursor row's)
so they stand out in every terminal."""

from __future__ import annotations

from textual.color import Color
from textual.theme import BUILTIN_THEMES, Theme

BASE = BUILTIN_THEMES["textual-dark"]
THEME = Theme(
    name="mailroot", primary="#005F9E", secondary=BASE.secondary, warning=BASE.warning,
    error="#FF5F5F", success=BASE.success, accent=BASE.accent, foreground=BASE.foreground,
    dark=True, luminosity_spread=BASE.luminosity_spread, text_alpha=BASE.text_alpha)

OK = "#5FD75F"
WAITING = "#FFD75F"
ACTIVE = "#5FD7FF"
MUTED = "#AFAFAF"
FAILED_TEXT = "bold #FF5F5F"  # a failure named in running text (the inspector)
FAILED_BACKGROUND = "#AF0000"
FAILED = f"bold #FFFFFF on {FAILED_BACKGROUND}"
FAILED_NO_COLOR = "bold underline"  # reverse is the cursor's: the most visible of all
PALETTE = {"ok": OK, "waiting": WAITING, "active": ACTIVE, "muted": MUTED,
           "failed text": FAILED_TEXT.split()[-1]}


def failed_style(no_color: bool) -> str:
    """Failures: white on red in colour; bold and underlined without colour, where reverse
    video is kept for the cursor row."""
    return FAILED_NO_COLOR if no_color else FAILED


# (what, foreground, background) as the console draws them; "$name" is a theme variable.
PAIRS: list[tuple[str, str, str]] = [
    ("text", "$foreground", "$background"),
    ("text in dialogs and tables", "$foreground", "$surface"),
    ("text in panels, form fields", "$foreground", "$panel"),
    ("header and form titles", "$foreground", "$primary-background"),
    ("pane titles", "$foreground", "$boost"),
    ("table cursor row", "$block-cursor-foreground", "$block-cursor-background"),
    ("dialog hints", "$text-muted", "$surface"),
    ("empty field placeholder", "$text-muted", "$panel"),
    ("form errors", "$error", "$surface"),
    ("form group titles", "$accent", "$background"),
    ("active pane title", "$background", "$accent"),
    ("failures", "#FFFFFF", FAILED_BACKGROUND),
] + [(f"{name} cells", colour, background) for name, colour in PALETTE.items()
     for background in ("$background", "$surface", "$panel")]


def resolve(value: str, variables: dict[str, str], under: Color | None = None) -> Color:
    """A colour as the screen shows it: theme variables looked up, "auto N%" and alpha
    blended over what is under it."""
    text = variables[value[1:]] if value.startswith("$") else value
    under = under or Color.parse(variables["background"])
    if text.startswith("auto"):
        alpha = float(text.split()[1].rstrip("%")) / 100 if " " in text else 1.0
        return under.blend(under.get_contrast_text(1.0), alpha)
    colour = Color.parse(text)
    return under.blend(colour.with_alpha(1.0), colour.a) if colour.a < 1 else colour


def luminance(colour: Color) -> float:
    def channel(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    return 0.2126 * channel(colour.r) + 0.7152 * channel(colour.g) + 0.0722 * channel(colour.b)


def contrast(foreground: Color, background: Color) -> float:
    """The WCAG contrast ratio, 1 to 21."""
    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def contrasts(theme: Theme = THEME) -> list[tuple[str, float]]:
    variables = theme.to_color_system().generate()
    out = []
    for what, fg, bg in PAIRS:
        background = resolve(bg, variables)
        out.append((what, contrast(resolve(fg, variables, background), background)))
    return out
