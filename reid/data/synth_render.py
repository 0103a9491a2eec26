"""Draw one synthetic pedestrian (PIL + numpy) from its identity, outfit and camera factors.

The figure is drawn at ``SUPERSAMPLE`` times the output size and box-reduced, which anti-aliases the
edges. Sizes are fractions of ``ref``, the height the camera gives a person of height 1.0: widths and
the head do not grow with body height, so a tall person is visibly more "heads" tall (and slimmer)
than a short one of the same build, whatever the camera scale.

The factor objects are the dataclasses of :mod:`reid.data.synth`; this module only reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2

RGB = tuple[int, int, int]
Point = tuple[float, float]

# Garment / bag / shoe colours: saturated or clearly light / dark, so they survive JPEG and noise.
COLOURS: dict[str, RGB] = {
    "black": (28, 28, 30), "white": (236, 236, 232), "grey": (128, 128, 130), "red": (200, 32, 36),
    "orange": (238, 128, 24), "yellow": (232, 204, 40), "green": (36, 140, 56), "blue": (34, 74, 196),
    "purple": (122, 48, 168), "pink": (240, 132, 184), "brown": (112, 70, 36),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (26, 22, 20), "brown": (96, 60, 32), "blonde": (214, 182, 116), "red": (168, 70, 34),
    "grey": (150, 150, 152), "white": (226, 226, 222),
}
_SKIN = np.array([(246, 218, 194), (226, 182, 146), (190, 138, 98), (134, 88, 58), (84, 54, 38)], dtype=float)
_WHITE = (255, 255, 255)


def skin_rgb(tone: float) -> RGB:
    """Skin colour for a tone in [0, 1] (0 = pale, 1 = dark), interpolated between anchors."""
    pos = min(max(tone, 0.0), 1.0) * (len(_SKIN) - 1)
    i = min(int(pos), len(_SKIN) - 2)
    return tuple(int(round(c)) for c in _SKIN[i] + (pos - i) * (_SKIN[i + 1] - _SKIN[i]))  # type: ignore


def hair_rgb(name: str, shade: float) -> RGB:
    """Hair colour ``name``, up to 15% lighter (shade > 0) or darker (shade < 0)."""
    return _shade(HAIR_COLOURS[name], 1.0 + 0.15 * shade)


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in rgb)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + t * (y - x))) for x, y in zip(a, b))  # type: ignore[return-value]


def _lerp(a: Point, b: Point, t: float) -> Point:
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


def _polar(p: Point, length: float, angle_deg: float, side: int) -> Point:
    """The point ``length`` below ``p``, turned ``angle_deg`` outwards (side -1: image-left)."""
    a = math.radians(angle_deg)
    return (p[0] + side * length * math.sin(a), p[1] + length * math.cos(a))


@dataclass
class _Body:
    """Pixel geometry of one figure on the supersampled canvas (x right, y down); widths are halves."""

    cx: float
    ref: float
    height: float  # head top to soles
    hr: float  # head radius
    head_cy: float
    shoulder_y: float
    waist_y: float
    hip_y: float
    knee_y: float
    foot_y: float
    shoulder_w: float
    waist_w: float
    hip_w: float
    arm_w: float  # full widths of the limbs
    leg_w: float
    joints: dict[str, tuple[Point, Point]]  # shoulder / elbow / hand / hip / knee / ankle: (left, right)


def _body(identity, camera, canvas_w: int, canvas_h: int) -> _Body:
    ref = min(canvas_h, 2 * canvas_w) * camera.scale
    p, b, woman = ref * identity.height, identity.build, identity.gender == "woman"
    foot_y = 0.5 * (canvas_h + ref) + camera.shift_y * canvas_h
    cx = 0.5 * canvas_w + camera.shift_x * canvas_w
    hr = ref * 0.058 * identity.head_size
    shoulder_y, hip_y = foot_y - p + 2 * hr + ref * 0.03, foot_y - p * identity.leg_ratio
    shoulder_w, hip_w = ref * 0.125 * b * (0.82 if woman else 1.0), ref * 0.098 * b * (1.16 if woman else 0.92)
    arm_w, leg_w = ref * 0.045 * (0.6 + 0.4 * b), ref * 0.056 * (0.5 + 0.5 * b)
    fore = math.cos(math.radians(camera.arm_swing))  # an arm swinging to / from the camera looks shorter
    joints: dict[str, list[Point]] = {k: [] for k in ("shoulder", "elbow", "hand", "hip", "knee", "ankle")}
    for i, side in enumerate((-1, 1)):
        sh = (cx + side * (shoulder_w - 0.45 * arm_w), shoulder_y + 0.5 * arm_w)
        el = _polar(sh, p * 0.18 * fore, camera.arm_out[i], side)
        hand = _polar(el, p * 0.16 * fore, camera.arm_out[i] - 0.5 * camera.elbow_bend, side)
        hip = (cx + side * 0.5 * hip_w, hip_y)
        lift = p * 0.045 * camera.stride if i == camera.step_leg else 0.0  # the stepping foot is raised
        leg = foot_y - hip_y - 0.3 * leg_w - lift
        knee = _polar(hip, 0.5 * leg, camera.leg_out[i], side)
        ankle = _polar(knee, 0.5 * leg, camera.leg_out[i], side)
        for key, point in zip(joints, (sh, el, hand, hip, knee, ankle)):
            joints[key].append(point)
    stoop = 0.3 * hr if identity.age == "old" else 0.0  # the head sinks into the shoulders
    return _Body(
        cx=cx, ref=ref, height=p, hr=hr, head_cy=foot_y - p + hr + stoop, shoulder_y=shoulder_y,
        waist_y=shoulder_y + 0.55 * (hip_y - shoulder_y), hip_y=hip_y, knee_y=0.5 * (hip_y + foot_y),
        foot_y=foot_y, shoulder_w=shoulder_w, waist_w=ref * 0.1 * b * (0.76 if woman else 1.0), hip_w=hip_w,
        arm_w=arm_w, leg_w=leg_w, joints={k: (v[0], v[1]) for k, v in joints.items()},
    )


def _disc(draw: ImageDraw.ImageDraw, p: Point, r: float, fill: RGB) -> None:
    draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=fill)


def _capsule(draw: ImageDraw.ImageDraw, a: Point, b: Point, width: float, fill: RGB) -> None:
    """A limb segment: a thick line with round ends."""
    draw.line([a, b], fill=fill, width=max(1, int(round(width))))
    _disc(draw, a, 0.5 * width, fill)
    _disc(draw, b, 0.5 * width, fill)


def _limb(draw: ImageDraw.ImageDraw, a: Point, b: Point, c: Point, width: float, fill: RGB) -> None:
    _capsule(draw, a, b, width, fill)
    _capsule(draw, b, c, width, fill)


def _head_box(b: _Body, sx: float = 0.86, sy: float = 1.0, dy: float = 0.0) -> list[float]:
    return [b.cx - sx * b.hr, b.head_cy - sy * b.hr + dy, b.cx + sx * b.hr, b.head_cy + sy * b.hr + dy]


def _gradient(base: RGB, factor: float, w: int, h: int) -> Image.Image:
    """A canvas shading from ``base`` at the top to ``base * factor`` at the bottom."""
    scale = np.linspace(1.0, factor, h, dtype=np.float32)[:, None, None]  # (h, 1, 1)
    column = np.clip(np.asarray(base, dtype=np.float32) * scale, 0, 255).astype(np.uint8)  # (h, 1, 3)
    return Image.fromarray(np.repeat(column, w, axis=1))  # (h, w, 3)


def _background(draw, camera, b: _Body, w: int, h: int, rng: np.random.Generator) -> None:
    """On the gradient canvas: a wall of windows, panels or foliage, then the ground and a shadow."""
    base = tuple(camera.bg_colour)
    if camera.background == "street":
        step_x, step_y = w / rng.integers(2, 4), h / rng.integers(4, 7)
        for gy in np.arange(rng.random() * step_y * 0.5, h * 0.6, step_y):
            for gx in np.arange(rng.random() * step_x * 0.5, w, step_x):
                draw.rectangle([gx, gy, gx + 0.55 * step_x, gy + 0.6 * step_y], fill=_shade(base, 0.55))
    elif camera.background == "stripes":
        alt, step = _shade(base, 0.85 if rng.random() < 0.5 else 1.15), w / rng.integers(3, 7)
        for x in np.arange(0, w, 2 * step):
            draw.rectangle([x, 0, x + step, h], fill=alt)
    elif camera.background == "park":
        for _ in range(int(rng.integers(3, 8))):
            leaf = _mix(base, (60, 100, 50), 0.3 + 0.3 * rng.random())
            _disc(draw, (rng.random() * w, rng.random() * h * 0.6), (0.1 + 0.2 * rng.random()) * w, leaf)
    ground = tuple(camera.ground_colour)
    horizon = b.foot_y - b.ref * (0.12 + 0.2 * rng.random())
    draw.rectangle([0, horizon, w, h], fill=ground)
    draw.line([(0, horizon), (w, horizon)], fill=_shade(ground, 0.7), width=2)
    sw = 2.2 * b.hip_w
    draw.ellipse([b.cx - sw, b.foot_y - 0.2 * sw, b.cx + sw, b.foot_y + 0.2 * sw], fill=_shade(ground, 0.75))


def _legs(draw, b: _Body, outfit, skin: RGB) -> None:
    """Bare legs, then the lower garment (or a dress's skirt) and the shoes over them."""
    colour, lw, j, kind = COLOURS[outfit.lower_colour], b.leg_w, b.joints, outfit.lower_type
    for i in range(2):
        _limb(draw, j["hip"][i], j["knee"][i], j["ankle"][i], lw, skin)
    if kind in ("trousers", "jeans", "shorts"):
        top, crotch = b.hip_y - 0.6 * lw, b.hip_y + 1.1 * lw
        draw.polygon([(b.cx - b.hip_w - 0.1 * lw, top), (b.cx + b.hip_w + 0.1 * lw, top),
                      (b.cx + 0.5 * b.hip_w + 0.5 * lw, crotch), (b.cx - 0.5 * b.hip_w - 0.5 * lw, crotch)],
                     fill=colour)
        for i, side in enumerate((-1, 1)):
            leg = (j["hip"][i], j["knee"][i], j["ankle"][i])
            if kind == "shorts":
                _capsule(draw, leg[0], _lerp(leg[0], leg[1], 0.6), 1.25 * lw, colour)
                continue
            _limb(draw, *leg, 1.18 * lw, colour)
            if kind == "jeans":  # a light outer seam and a dark turned-up hem: denim, not plain cloth
                draw.line([(x + side * 0.3 * lw, y) for x, y in leg], fill=_mix(colour, _WHITE, 0.3), width=1)
                _capsule(draw, _lerp(leg[1], leg[2], 0.88), leg[2], 1.2 * lw, _shade(colour, 0.6))
    else:  # skirt, long skirt, dress: a flared trapezoid over the legs
        bottom = max(a[1] for a in j["ankle"]) - 0.4 * lw if kind == "long skirt" else b.knee_y + 0.1 * lw
        top = b.waist_y if kind == "dress" else b.hip_y - 0.8 * lw
        flare = b.hip_w + 0.9 * lw + 0.125 * (bottom - b.hip_y)
        draw.polygon([(b.cx - b.waist_w, top), (b.cx + b.waist_w, top), (b.cx + flare, bottom),
                      (b.cx - flare, bottom)], fill=colour)
    shoe = COLOURS[outfit.shoes_colour]
    for i, side in enumerate((-1, 1)):
        ax, ay = j["ankle"][i]
        if outfit.shoes_type == "boots":
            _capsule(draw, _lerp(j["knee"][i], j["ankle"][i], 0.55), (ax, ay), 1.2 * lw, shoe)
        x = ax + side * 0.2 * lw
        draw.ellipse([x - 0.85 * lw, ay - 0.35 * lw, x + 0.85 * lw, ay + 0.45 * lw], fill=shoe)


def _torso(draw, b: _Body, outfit, skin: RGB) -> None:
    """The upper garment's body: straps for a tank top, mid-thigh for a coat, to the waist for a dress."""
    colour, cx, kind = COLOURS[outfit.upper_colour], b.cx, outfit.upper_type
    top_w = b.shoulder_w * (0.62 if kind == "tank top" else 1.0)
    bottom, bottom_w = b.hip_y, b.hip_w
    if kind == "coat":
        bottom, bottom_w = b.hip_y + 0.65 * (b.knee_y - b.hip_y), b.hip_w + 0.9 * b.leg_w
    elif kind == "dress":
        bottom, bottom_w = b.waist_y, b.waist_w
    for sh in b.joints["shoulder"]:  # rounded shoulders, bare around a tank top's straps
        _disc(draw, sh, 0.58 * b.arm_w, skin if kind == "tank top" else colour)
    draw.polygon([(cx - top_w, b.shoulder_y), (cx + top_w, b.shoulder_y), (cx + b.waist_w, b.waist_y),
                  (cx + bottom_w, bottom), (cx - bottom_w, bottom), (cx - b.waist_w, b.waist_y)], fill=colour)


def _details(draw, b: _Body, outfit, facing: str, skin: RGB) -> None:
    """What tells garments of one colour apart: necklines, open fronts, collars, buttons, hoods."""
    cx, kind, colour = b.cx, outfit.upper_type, COLOURS[outfit.upper_colour]
    dark, light, neck = _shade(colour, 0.6), _mix(colour, _WHITE, 0.5), 0.45 * b.hr
    coat_end = b.hip_y + 0.65 * (b.knee_y - b.hip_y)
    if facing == "back":
        if kind in ("jacket", "coat", "shirt"):  # collar band
            draw.rectangle([cx - neck, b.shoulder_y, cx + neck, b.shoulder_y + 0.25 * b.hr], fill=dark)
        if kind == "coat":  # back vent
            draw.line([(cx, b.hip_y), (cx, coat_end)], fill=dark, width=2)
        if kind == "hoodie":  # the hood lies on the upper back
            y = b.shoulder_y + 0.55 * b.hr
            draw.ellipse([cx - 1.1 * b.hr, y - 0.85 * b.hr, cx + 1.1 * b.hr, y + 0.85 * b.hr], fill=dark)
    elif kind in ("t-shirt", "tank top", "dress"):  # round neckline
        draw.pieslice([cx - neck, b.shoulder_y - neck, cx + neck, b.shoulder_y + neck], 0, 180, fill=skin)
    elif kind in ("jacket", "coat"):  # open over a contrasting top, then a zip / buttons
        inner = (235, 235, 230) if sum(colour) < 330 else (30, 30, 32)
        iw = 0.22 * b.shoulder_w
        draw.polygon([(cx - iw, b.shoulder_y), (cx + iw, b.shoulder_y), (cx, b.waist_y)], fill=inner)
        draw.line([(cx, b.waist_y), (cx, b.hip_y if kind == "jacket" else coat_end)], fill=dark, width=2)
        for t in (0.3, 0.55, 0.8) if kind == "coat" else ():
            _disc(draw, (cx + 4, b.waist_y + t * (coat_end - b.waist_y)), 2, dark)
    elif kind == "shirt":  # pointed collar and a button placket
        y, hr = b.shoulder_y, b.hr
        for side in (-1, 1):
            draw.polygon([(cx, y + 0.35 * hr), (cx + side * 0.7 * hr, y - 0.1 * hr),
                          (cx + side * 0.75 * hr, y + 0.3 * hr)], fill=light)
        for t in (0.15, 0.42, 0.68, 0.95):
            _disc(draw, (cx, b.shoulder_y + t * (b.hip_y - b.shoulder_y)), 1.5, dark)
    elif kind == "hoodie":  # pouch pocket, drawstrings, and the hood around the neck
        y0, y1 = b.waist_y + 0.1 * (b.hip_y - b.waist_y), b.hip_y - 0.15 * (b.hip_y - b.waist_y)
        draw.polygon([(cx - 0.45 * b.waist_w, y0), (cx + 0.45 * b.waist_w, y0), (cx + 0.65 * b.waist_w, y1),
                      (cx - 0.65 * b.waist_w, y1)], fill=dark)
        for side in (-1, 1):
            x = cx + side * 0.3 * b.hr
            draw.line([(x, b.shoulder_y), (x, b.shoulder_y + 1.2 * b.hr)], fill=light, width=2)
        draw.ellipse(_head_box(b, 1.25, 0.9, 0.55 * b.hr), fill=_shade(colour, 0.8))


def _arms(draw, b: _Body, outfit, skin: RGB) -> None:
    colour = COLOURS[outfit.upper_colour]
    sleeve = {"t-shirt": 0.55, "dress": 0.4, "tank top": 0.0}.get(outfit.upper_type, 1.0)  # of the upper arm
    for sh, el, hand in zip(b.joints["shoulder"], b.joints["elbow"], b.joints["hand"]):
        _limb(draw, sh, el, hand, b.arm_w, skin)
        if sleeve == 1.0:  # long sleeves to the wrist
            _limb(draw, sh, el, _lerp(el, hand, 0.85), 1.12 * b.arm_w, colour)
        elif sleeve > 0.0:
            _capsule(draw, sh, _lerp(sh, el, sleeve), 1.2 * b.arm_w, colour)
        _disc(draw, hand, 0.6 * b.arm_w, skin)


def _hair_behind(draw, b: _Body, identity, hair: RGB) -> None:
    """Front view: long hair hanging behind the shoulders, a ponytail behind the neck."""
    if identity.hair_style == "long":
        box = [b.cx - 1.25 * b.hr, b.head_cy, b.cx + 1.25 * b.hr, b.shoulder_y + 0.2 * b.height]
        draw.rounded_rectangle(box, radius=0.5 * b.hr, fill=hair)
    elif identity.hair_style == "ponytail":
        x = b.cx + 0.95 * b.hr
        draw.ellipse([x - 0.4 * b.hr, b.head_cy - 0.2 * b.hr, x + 0.45 * b.hr, b.head_cy + 2.0 * b.hr], fill=hair)


def _head(draw, b: _Body, identity, hair: RGB, skin: RGB, facing: str) -> None:
    """Neck, head and hair; in a front view also the face (hairline, locks, beard, eyes)."""
    style, hr, cx = identity.hair_style, b.hr, b.cx
    draw.rectangle([cx - 0.32 * hr, b.head_cy, cx + 0.32 * hr, b.shoulder_y + 0.1 * hr], fill=skin)
    if style == "bun":
        draw.ellipse([cx - 0.62 * hr, b.head_cy - 1.75 * hr, cx + 0.62 * hr, b.head_cy - 0.5 * hr], fill=hair)
    draw.ellipse(_head_box(b) if style == "bald" else _head_box(b, 0.94, 1.08, -0.02 * hr), fill=hair)
    if facing == "back":
        if style in ("medium", "long"):
            end = b.head_cy + 1.4 * hr if style == "medium" else b.shoulder_y + 0.2 * b.height
            half = 1.1 * hr if style == "medium" else 1.25 * hr
            draw.rounded_rectangle([cx - half, b.head_cy, cx + half, end], radius=0.3 * hr, fill=hair)
        elif style == "ponytail":
            _capsule(draw, (cx, b.head_cy + 0.5 * hr), (cx, b.shoulder_y + 0.05 * b.height), 0.5 * hr, hair)
        return
    face = _head_box(b, 0.8, 0.95, 0.05 * hr)
    if style != "bald":  # the face below the hairline
        draw.chord(face, -15, 195, fill=skin)
    if style in ("medium", "long"):  # locks framing the face, to the jaw or onto the shoulders
        end = b.head_cy + (1.2 * hr if style == "medium" else 0.6 * hr + 0.7 * (b.shoulder_y - b.head_cy))
        for side in (-1, 1):
            x = cx + side * 0.86 * hr
            _capsule(draw, (x, b.head_cy - 0.3 * hr), (x, end), 0.45 * hr, hair)
    if identity.beard:
        draw.chord(face, 25, 155, fill=_shade(hair, 0.85))
    for side in (-1, 1):
        _disc(draw, (cx + side * 0.32 * hr, b.head_cy + 0.05 * hr), 0.1 * hr, (35, 28, 28))


def _bag(draw, b: _Body, outfit, facing: str, layer: str) -> None:
    """``layer`` "behind": a backpack peeking out behind the torso (front view); "on": straps or the
    pack on the back; "side": a handbag from the hand or a shoulder bag at the hip."""
    if outfit.bag == "none" or (layer == "side") == (outfit.bag == "backpack"):
        return
    colour = COLOURS[outfit.bag_colour]
    dark = _shade(colour, 0.65) if sum(colour) > 150 else _mix(colour, _WHITE, 0.3)
    top, bottom = b.shoulder_y + 0.02 * b.height, b.hip_y - 0.02 * b.height
    if layer == "behind" and facing == "front":
        w = 1.16 * b.shoulder_w
        draw.rounded_rectangle([b.cx - w, top, b.cx + w, bottom], radius=0.3 * b.hr, fill=colour)
    elif layer == "on" and facing == "front":
        for side in (-1, 1):
            x = b.cx + side * 0.6 * b.shoulder_w
            draw.line([(x, b.shoulder_y), (x + side * 0.1 * b.shoulder_w, b.waist_y)], fill=dark,
                      width=max(2, int(0.35 * b.arm_w)))
    elif layer == "on":
        w, y = 0.85 * b.shoulder_w, top + 0.55 * (bottom - top)
        draw.rounded_rectangle([b.cx - w, top, b.cx + w, bottom], radius=0.3 * b.hr, fill=colour)
        draw.rectangle([b.cx - 0.6 * w, y, b.cx + 0.6 * w, bottom - 0.08 * (bottom - top)], fill=dark)
    elif layer == "side":
        side = 1 if facing == "front" else -1
        if outfit.bag == "handbag":
            hx, hy = b.joints["hand"][(side + 1) // 2]
            w, h, x = b.leg_w, 1.5 * b.leg_w, hx + side * 0.2 * b.arm_w
            draw.arc([x - 0.7 * w, hy - 0.3 * h, x + 0.7 * w, hy + 0.9 * h], 180, 360, fill=dark, width=2)
            draw.rounded_rectangle([x - w, hy + 0.35 * h, x + w, hy + 1.3 * h], radius=0.2 * w, fill=colour)
        else:  # shoulder bag: strap across the chest / back
            bx, by, w = b.cx + side * (b.hip_w + 0.5 * b.leg_w), b.hip_y, 0.9 * b.leg_w
            draw.line([(b.cx - side * 0.6 * b.shoulder_w, b.shoulder_y), (bx, by)], fill=dark,
                      width=max(2, int(0.3 * b.arm_w)))
            draw.rounded_rectangle([bx - w, by - 0.8 * w, bx + w, by + 0.8 * w], radius=0.2 * w, fill=colour)


def render(identity, outfit, camera, image_size: tuple[int, int]) -> Image.Image:
    """The RGB image (H, W) = ``image_size`` of ``identity`` wearing ``outfit``, seen by ``camera``."""
    h, w = image_size[0] * SUPERSAMPLE, image_size[1] * SUPERSAMPLE
    rng = np.random.default_rng(camera.texture_seed)
    img = _gradient(tuple(camera.bg_colour), 0.8 + 0.4 * rng.random(), w, h)
    draw = ImageDraw.Draw(img)
    b, front = _body(identity, camera, w, h), camera.facing == "front"
    skin = skin_rgb(identity.skin_tone)
    hair = skin if identity.hair_style == "bald" else hair_rgb(identity.hair_colour, identity.hair_shade)
    _background(draw, camera, b, w, h, rng)
    if front:
        _hair_behind(draw, b, identity, hair)
    _bag(draw, b, outfit, camera.facing, "behind")
    _legs(draw, b, outfit, skin)
    _torso(draw, b, outfit, skin)
    _details(draw, b, outfit, camera.facing, skin)
    _bag(draw, b, outfit, camera.facing, "on")  # under long hair and the arms
    _head(draw, b, identity, hair, skin, camera.facing)
    _arms(draw, b, outfit, skin)
    _bag(draw, b, outfit, camera.facing, "side")
    img = img.reduce(SUPERSAMPLE)
    if camera.mirror:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32)  # (H, W, 3)
    gain = camera.brightness * np.asarray(camera.tint, dtype=np.float32)  # (3,) exposure and colour cast
    noise = rng.standard_normal(arr.shape, dtype=np.float32) * camera.noise  # (H, W, 3) sensor noise
    return Image.fromarray(np.clip(arr * gain + noise, 0, 255).astype(np.uint8))
