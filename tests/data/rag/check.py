#!/usr/bin/env python3
"""Validate tests/data/rag/questions.jsonl (and cross.jsonl, when present) against tests/data/rag/docs/ (stdlib only)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "docs")
QUESTIONS = os.path.join(HERE, "questions.jsonl")
CROSS = os.path.join(HERE, "cross.jsonl")
OTHER = {"zh": "en", "en": "zh"}


def check_lines(path, errors, doc_cache, cross):
    """Per-line checks shared by both files.

    Returns (counts by question language, questions per doc, set of questions).
    Same-language file: the doc must be in the question's language.
    Cross-lingual file (cross=True): the doc must be in the other language.
    """
    label = os.path.basename(path)
    counts = {"zh": 0, "en": 0}
    per_doc = {}
    seen_q = set()
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        where = f"{label} line {n}" if cross else f"line {n}"
        if not line.strip():
            errors.append(f"{where}: empty line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"{where}: invalid JSON: {e}")
            continue
        if not isinstance(obj, dict) or set(obj) != {"q", "lang", "doc", "answer"}:
            errors.append(f"{where}: expected exactly keys q, lang, doc, answer")
            continue
        if not all(isinstance(obj[k], str) and obj[k] for k in obj):
            errors.append(f"{where}: all fields must be non-empty strings")
            continue
        q, lang, doc, ans = obj["q"], obj["lang"], obj["doc"], obj["answer"]
        if lang not in counts:
            errors.append(f"{where}: lang must be 'zh' or 'en', got {lang!r}")
            continue
        if cross:
            if not doc.endswith(f".{OTHER[lang]}.md"):
                errors.append(
                    f"{where}: doc {doc!r} must be in the other language than the question ({lang!r})"
                )
        elif not doc.endswith(f".{lang}.md"):
            errors.append(f"{where}: doc {doc!r} does not match lang {lang!r}")
        if q in seen_q:
            errors.append(f"{where}: duplicate question")
        seen_q.add(q)
        path_doc = os.path.join(DOCS, doc)
        if os.path.basename(doc) != doc or not os.path.isfile(path_doc):
            errors.append(f"{where}: doc {doc!r} not found in docs/")
            continue
        if doc not in doc_cache:
            with open(path_doc, encoding="utf-8") as f:
                doc_cache[doc] = f.read()
        text = doc_cache[doc]
        if "\n" in ans or "\r" in ans:
            errors.append(f"{where}: answer contains a line break")
        if "**" in ans or "#" in ans or "`" in ans or ans.lstrip().startswith("- "):
            errors.append(f"{where}: answer contains Markdown markup")
        if not 4 <= len(ans) <= 25:
            errors.append(f"{where}: answer length {len(ans)} not in 4..25")
        occ = text.count(ans)
        if occ != 1:
            errors.append(f"{where}: answer {ans!r} occurs {occ} times in {doc} (need exactly 1)")
        counts[lang] += 1
        per_doc[doc] = per_doc.get(doc, 0) + 1
    return counts, per_doc, seen_q


def main() -> int:
    errors = []
    doc_cache = {}
    doc_names = sorted(n for n in os.listdir(DOCS) if n.endswith(".md"))

    counts, per_doc, seen_q = check_lines(QUESTIONS, errors, doc_cache, cross=False)
    total = sum(counts.values())
    if counts["zh"] < 30:
        errors.append(f"only {counts['zh']} zh questions (need >= 30)")
    if counts["en"] < 30:
        errors.append(f"only {counts['en']} en questions (need >= 30)")
    if total < 60:
        errors.append(f"only {total} questions (need >= 60)")
    for name in doc_names:
        if name not in per_doc:
            errors.append(f"doc {name} has no questions")

    print(f"questions: {total} (zh {counts['zh']}, en {counts['en']})")
    for d in sorted(per_doc):
        print(f"  {d}: {per_doc[d]}")

    if os.path.isfile(CROSS):
        x_counts, x_per_doc, x_seen = check_lines(CROSS, errors, doc_cache, cross=True)
        for q in sorted(x_seen & seen_q):
            errors.append(f"cross.jsonl: question also in questions.jsonl: {q!r}")
        en_zh, zh_en = x_counts["en"], x_counts["zh"]
        if en_zh < 40:
            errors.append(f"cross.jsonl: only {en_zh} en->zh questions (need >= 40)")
        if zh_en < 20:
            errors.append(f"cross.jsonl: only {zh_en} zh->en questions (need >= 20)")
        for name in doc_names:
            if name not in x_per_doc:
                errors.append(f"cross.jsonl: doc {name} has no questions")
        print(f"cross: {en_zh + zh_en} (en->zh {en_zh}, zh->en {zh_en})")
        for d in sorted(x_per_doc):
            print(f"  {d}: {x_per_doc[d]}")

    if errors:
        for e in errors:
            print("ERROR:", e, file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
