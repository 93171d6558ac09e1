#!/usr/bin/env python3
"""CUDA -> HIP-CPU source rewrite for the emulated test build (the .cu file itself is untouched).

Only two constructs cannot be handled by a header (tests/cuda_emu/shim/ maps everything else):
  1. `kernel<T, U><<<grid, block[, smem[, stream]]>>>(args...)`
       -> `hipLaunchKernelGGL((kernel<T, U>), dim3(grid), dim3(block), (smem), (stream), args...)`
  2. `extern __shared__ [__align__(n)] T name[];` -> `HIP_DYNAMIC_SHARED(T, name)`
Comments and string literals are never rewritten. The output starts with the shim include and a
`#line 1 "<the .cu>"`, and every rewrite keeps the number of newlines, so compiler messages point
at the original .cu lines.

usage: cu2cpu.py in.cu out.cpp      (or import: translate(text, path) -> (text, n_launch, n_dyn))
"""
import re
import sys

OPEN = "([{"
CLOSE = ")]}"


def code_mask(src):
    """`src` with comments and string/char literals blanked (same length, newlines kept)."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
        else:
            i += 1
            continue
        for k in range(i, j):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


def split_top(text):
    """Split on commas not nested in (), [], {} (template angle brackets in a launch config are
    rare; wrap such expressions in parentheses)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    tail = "".join(cur).strip()
    if tail:
        parts.append(tail)
    return parts


def match_paren(mask, i):
    """mask[i] == '('; return the index just past the matching ')'."""
    if mask[i] != "(":
        raise ValueError(f"expected '(' after a launch configuration, got {mask[i:i + 40]!r}")
    depth = 0
    for j in range(i, len(mask)):
        if mask[j] in OPEN:
            depth += 1
        elif mask[j] in CLOSE:
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError("unbalanced parentheses in a kernel launch")


def kernel_name_start(mask, end):
    """Walk back from `end` (the index of '<<<') over `ns::name<tmpl, args>`; return its start."""
    i = end
    while i > 0 and mask[i - 1].isspace():
        i -= 1
    if mask[i - 1] == ">":  # template argument list: walk back to the matching '<'
        depth = 0
        while True:
            i -= 1
            if i < 0:
                raise ValueError("unbalanced template arguments before '<<<'")
            if mask[i] == ">":
                depth += 1
            elif mask[i] == "<":
                depth -= 1
                if depth == 0:
                    break
        while i > 0 and mask[i - 1].isspace():
            i -= 1
    while i > 0 and (mask[i - 1].isalnum() or mask[i - 1] in "_:"):
        i -= 1
    return i


def _keep_lines(text, original):
    """`text` followed by as many newlines as `original` had more than it (line numbers kept)."""
    return text + "\n" * max(0, original.count("\n") - text.count("\n"))


def rewrite_launches(src):
    mask = code_mask(src)
    out, pos, n = [], 0, 0
    while True:
        k = mask.find("<<<", pos)
        if k < 0:
            out.append(src[pos:])
            break
        name_start = kernel_name_start(mask, k)
        name = src[name_start:k].strip()
        cfg_end = mask.find(">>>", k)
        if cfg_end < 0:
            raise ValueError("'<<<' without '>>>'")
        cfg = split_top(src[k + 3:cfg_end])
        if not 2 <= len(cfg) <= 4:
            raise ValueError(
                f"launch configuration with {len(cfg)} entries: {src[k:cfg_end + 3]!r}")
        j = cfg_end + 3
        while mask[j].isspace():
            j += 1
        args_end = match_paren(mask, j)
        args = src[j + 1:args_end - 1].strip()
        grid, block = cfg[0], cfg[1]
        smem = cfg[2] if len(cfg) > 2 else "0"
        stream = cfg[3] if len(cfg) > 3 else "nullptr"
        launch = f"hipLaunchKernelGGL(({name}), dim3({grid}), dim3({block}), ({smem}), ({stream})"
        launch += (", " + args if args else "") + ")"
        out.append(src[pos:name_start])
        out.append(_keep_lines(launch, src[name_start:args_end]))
        pos = args_end
        n += 1
    return "".join(out), n


DYN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:<> ]+?)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite_dynamic_shared(src):
    mask = code_mask(src)
    out, pos, n = [], 0, 0
    for m in DYN_SHARED.finditer(mask):
        out.append(src[pos:m.start()])
        out.append(_keep_lines(f"HIP_DYNAMIC_SHARED({m.group(1)}, {m.group(2)})", m.group(0)))
        pos = m.end()
        n += 1
    out.append(src[pos:])
    return "".join(out), n


def translate(src, path):
    """Return (translated text, number of launches, number of dynamic shared arrays)."""
    src, n_launch = rewrite_launches(src)
    src, n_dyn = rewrite_dynamic_shared(src)
    header = (f"// generated by tests/cuda_emu/cu2cpu.py from {path}: {n_launch} launches, "
              f"{n_dyn} dynamic shared arrays\n"
              '#include "cuda_on_hipcpu.h"\n'
              f'#line 1 "{path}"\n')
    return header + src, n_launch, n_dyn


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        text, n_launch, n_dyn = translate(f.read(), argv[1])
    with open(argv[2], "w") as f:
        f.write(text)
    print(f"{argv[1]}: {n_launch} launches, {n_dyn} extern __shared__ rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
