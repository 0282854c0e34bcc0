"""Repairing a damaged log: keep every record before the damage, move the rest aside.

Run by ``orchestrad --repair`` when opening the log raised `LogCorrupt`. Torn tails are
not its business: opening cuts those by itself (see `scan`). Nothing is deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from orchestrad.files import fsync_dir, unused_name
from orchestrad.log.errors import DAMAGED_DIR, LogCorrupt
from orchestrad.log.fileio import file_size, truncate_durably
from orchestrad.log.format import SEGMENT_HEADER_SIZE, SEGMENT_NAME, data_path, index_path, segment_name
from orchestrad.log.scan import scan_directory
from orchestrad.log.segment import list_segments


def repair(directory: Path) -> list[str]:
    """Keep the good prefix of a damaged log and move everything after the damage aside.

    For each LogCorrupt that opening would raise: the bytes from the damaged record to the
    end of that segment's .seg, and from that record's data on to the end of its .dat, are
    copied into ``directory/damaged/`` (one file each), every later segment pair is moved
    there whole, and the pair is truncated where the damage begins. (Data bytes that no
    record accounts for at the end of a sealed .dat are moved aside alone: no record is
    lost.) That repeats until the log checks clean (cutting a segment makes it the last
    one, whose data checksums are then checked too). Torn tails are left for open, which
    cuts and reports them. Nothing is deleted: the damaged bytes stay in damaged/ for a
    person to look at. Returns lines for a person saying what was done.
    """
    directory = Path(directory)
    lines: list[str] = []
    seen: set[tuple[Path, int]] = set()
    while True:
        try:
            segments, tears = scan_directory(directory, deep=False)
        except LogCorrupt as exc:
            if (exc.path, exc.offset) in seen or exc.cut is None:  # moving it aside did not help: do not loop
                raise
            seen.add((exc.path, exc.offset))
            lines.append(_move_damaged_aside(directory, exc, exc.cut))
            continue
        break
    if not lines:
        if segments:
            last = segments[-1].first + segments[-1].count - 1
            summary = f"records {segments[0].first}..{last} in {len(segments)} segment(s) check out"
        else:
            summary = "the log is empty"
        lines.append(f"nothing to repair: {summary}")
    for tear in tears:
        where = f"{tear.path.name} at offset {tear.offset:,}"
        lines.append(f"note: opening the log will cut a torn tail of {where} ({tear.why})")
    return lines


def _move_damaged_aside(directory: Path, exc: LogCorrupt, cut: tuple[int, int]) -> str:
    """Move aside what one LogCorrupt points at, cutting at `cut`; say what was kept and moved."""
    found = list_segments(directory)
    seg_path = exc.path.with_suffix(".seg")
    dat_path = data_path(seg_path)
    bad_first = int(SEGMENT_NAME.match(seg_path.name).group(1))  # type: ignore[union-attr]
    seg_size = seg_path.stat().st_size
    dat_size = file_size(dat_path)
    seg_cut, dat_cut = cut
    whole = seg_cut < SEGMENT_HEADER_SIZE  # the segment's own header is damaged
    records_cut = whole or seg_cut < seg_size
    later = [first for first, _ in found if first > bad_first] if records_cut else []
    for first in [bad_first, *later]:  # derived, and about to be wrong
        index_path(directory / segment_name(first)).unlink(missing_ok=True)
    damaged = directory / DAMAGED_DIR
    damaged.mkdir(mode=0o700, exist_ok=True)
    moved_bytes = []
    if whole:
        if dat_size is not None:
            os.rename(dat_path, unused_name(damaged / dat_path.name))
        os.rename(seg_path, unused_name(damaged / seg_path.name))
    else:
        if seg_cut < seg_size:
            _copy_tail(seg_path, seg_cut, unused_name(damaged / f"{seg_path.name}.from-{seg_cut}"))
            moved_bytes.append(f"{seg_size - seg_cut:,} bytes from {seg_path.name} at offset {seg_cut:,}")
        if dat_size is not None and dat_cut < dat_size:
            _copy_tail(dat_path, dat_cut, unused_name(damaged / f"{dat_path.name}.from-{dat_cut}"))
            moved_bytes.append(f"{dat_size - dat_cut:,} bytes from {dat_path.name} at offset {dat_cut:,}")
    for first in later:
        # The .dat first: a crash half-way leaves a .seg without its .dat, which the next
        # repair finds again, never a .dat that a new segment would be created over.
        later_seg = directory / segment_name(first)
        later_dat = data_path(later_seg)
        if later_dat.exists():
            os.rename(later_dat, unused_name(damaged / later_dat.name))
        os.rename(later_seg, unused_name(damaged / later_seg.name))
    fsync_dir(damaged)
    if not whole:
        if seg_cut < seg_size:
            truncate_durably(seg_path, seg_cut)
        if dat_size is not None and dat_cut < dat_size:
            truncate_durably(dat_path, dat_cut)
    fsync_dir(directory)

    first_kept = found[0][0]
    kept_segments = len(found) - len(later) - (1 if whole else 0)
    if records_cut:
        last_kept = (exc.seq if exc.seq is not None else bad_first) - 1
        kept = f"kept records {first_kept}..{last_kept:,}" if last_kept >= first_kept else "kept no records"
    else:
        kept = "kept every record"
    what = " and ".join([f"{len(later) + (1 if whole else 0)} segment(s)", *moved_bytes])
    return f"{kept} ({kept_segments} segment(s)); moved {what} to {damaged}/ (damage: {exc.detail})"


def _copy_tail(path: Path, offset: int, target: Path) -> None:
    """Copy a file's bytes from `offset` on into a new file, durably (before the cut)."""
    with open(path, "rb") as src, open(target, "xb") as dst:
        src.seek(offset)
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
