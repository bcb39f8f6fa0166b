"""Tables for the pipeline commands: a stage summary and the catalog status."""

from __future__ import annotations

from rich.table import Table

from aquila.data.pipeline import StageSummary
from aquila.data.workspace import STAGES, DataWorkspace


def summary_table(s: StageSummary) -> Table:
    t = Table(title=f"{s.stage}: {s.parts_run} parts run, {s.parts_skipped} up to date")
    for col in ("source", "in", "kept", "removed (reason: count)"):
        t.add_column(col)
    for name, v in s.per_source.items():
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(v["removed"].items()))
        t.add_row(name, str(v["documents_in"]), str(v["documents_kept"]), reasons or "-")
    t.add_row("[bold]total", str(s.documents_in), str(s.documents_kept),
              str(sum(s.documents_removed.values())))  # fmt: skip
    return t


def status_data(ws: DataWorkspace) -> dict:
    cat = ws.catalog
    sources = []
    for src in cat.sources():
        stages = {}
        for stage in STAGES:
            recs = cat.parts(stage, src.name)
            if not recs:
                continue
            removed: dict[str, int] = {}
            for r in recs:
                for k, n in r.removed.items():
                    removed[k] = removed.get(k, 0) + n
            stages[stage] = {
                "parts": len(recs),
                "documents_in": sum(r.documents_in for r in recs),
                "documents_kept": sum(r.documents_kept for r in recs),
                "chars_kept": sum(r.chars_kept for r in recs),
                "documents_removed": dict(sorted(removed.items())),
            }
        sources.append({
            "name": src.name, "lang": src.lang, "kind": src.kind, "files": len(src.files),
            "bytes": sum(f.size_bytes for f in src.files), "stages": stages,
        })  # fmt: skip
    contaminated = [
        {"source": s, "doc_id": d, "detail": x} for s, d, _, x in cat.removals("decontaminate")
    ]
    mixtures = [
        {"name": n, "version": v, "content_hash": h[:12], "created_at": c}
        for n, v, h, c in cat.mixtures()
    ]
    return {"workspace": str(ws.root), "sources": sources, "contaminated": contaminated,
            "mixtures": mixtures}  # fmt: skip


def status_tables(data: dict) -> list[Table]:
    t = Table(title=f"data workspace {data['workspace']}")
    for col in ("source", "lang", "kind", "files", "bytes", *STAGES):
        t.add_column(col)
    for s in data["sources"]:
        cells = []
        for stage in STAGES:
            st = s["stages"].get(stage)
            cells.append(
                f"{st['documents_kept']}/{st['documents_in']} docs, {st['chars_kept']:,} chars"
                if st else "-"
            )  # fmt: skip
        t.add_row(s["name"], s["lang"], s["kind"], str(s["files"]), f"{s['bytes']:,}", *cells)
    tables = [t]
    f = Table(title="removed documents by reason")
    for col in ("source", "stage", "reasons"):
        f.add_column(col)
    for s in data["sources"]:
        for stage, st in s["stages"].items():
            if st["documents_removed"]:
                reasons = ", ".join(f"{k}: {n}" for k, n in st["documents_removed"].items())
                f.add_row(s["name"], stage, reasons)
    tables.append(f)
    if data["contaminated"]:
        c = Table(title="contaminated documents")
        for col in ("source", "doc id", "match"):
            c.add_column(col)
        for row in data["contaminated"][:50]:
            c.add_row(row["source"], row["doc_id"], row["detail"])
        tables.append(c)
    if data["mixtures"]:
        m = Table(title="mixtures")
        for col in ("name", "version", "hash", "created"):
            m.add_column(col)
        for row in data["mixtures"]:
            m.add_row(row["name"], str(row["version"]), row["content_hash"], row["created_at"])
        tables.append(m)
    return tables
