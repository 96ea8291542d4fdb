"""Prompts -> labels: the digit a short English or Chinese prompt asks for, for the class-conditional
U-Net of chapter 05 (a text encoder takes this role from chapter 06 on).

    prompt_to_label("a seven") = prompt_to_label("七") = prompt_to_label("数字7") = 7
"""

from __future__ import annotations

import re
import unicodedata

_EN_DIGITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"〇": 0, "两": 2}
_EN_FILLER = {
    "a",
    "an",
    "the",
    "digit",
    "number",
    "numeral",
    "of",
    "draw",
    "write",
    "show",
    "me",
    "please",
    "handwritten",
    "hand",
    "written",
    "picture",
    "image",
    "generate",
    "make",
    "one's",
}
_ZH_FILLER = (
    "请",
    "给我",
    "帮我",
    "画",
    "写",
    "生成",
    "个",
    "张",
    "手写",
    "数字",
    "的",
    "图片",
    "图像",
    "吧",
    "。",
    "！",
    "!",
    ".",
)
PROMPT_FORMS = (
    '"7"',
    '"seven"',
    '"a seven"',
    '"digit 3"',
    '"the number five"',
    '"draw a 2"',
    '"七"',
    '"一个七"',
    '"数字7"',
)


def prompt_to_label(prompt: str) -> int:
    """The digit a short prompt asks for: "a seven", "digit 3", "7", "the number five", "一个七", "七" -> 7, 3, ...

    English number words or a single digit, with filler words (a, the, digit, number, draw, ...);
    Chinese numerals 零〇一二三四五六七八九 with fillers (一个, 数字, 画, ...). Anything else: ValueError."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a string such as {', '.join(PROMPT_FORMS)}, got {type(prompt).__name__}")
    text = unicodedata.normalize("NFKC", prompt).strip().lower()  # full-width ７ -> 7
    found: list[int] = []
    if re.search(r"[\u4e00-\u9fff〇]", text):  # Chinese
        rest = re.sub(r"一[个张只]", " ", text)  # "一个七": this 一 is "a", not the digit 1
        for filler in sorted(_ZH_FILLER, key=len, reverse=True):
            rest = rest.replace(filler, " ")
        tokens = [ch for ch in rest if not ch.isspace()]
        found = [
            _ZH_DIGITS[ch] if ch in _ZH_DIGITS else int(ch) for ch in tokens if ch in _ZH_DIGITS or ch in "0123456789"
        ]
        ok = len(found) == 1 and len(tokens) == 1
    else:
        tokens = [w for w in re.findall(r"[a-z']+|[-+]?\d+(?:\.\d+)?", text) if w not in _EN_FILLER]
        for w in tokens:
            if w in _EN_DIGITS:
                found.append(_EN_DIGITS[w])
            elif w.isdigit() and len(w) == 1:
                found.append(int(w))
        ok = len(found) == 1 and len(tokens) == 1
    if not ok:
        raise ValueError(
            f"prompt: expected one digit 0-9 asked for in a form like {', '.join(PROMPT_FORMS)}, got {prompt!r}"
        )
    return found[0]
