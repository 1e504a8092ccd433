"""Session: everything fixed between start_writing and the end of writing, and the file naming rule."""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass, field

import numpy as np

from .codecs import Codec
from .config import WriterConfig

__all__ = ["Session", "file_name"]


@dataclass
class Session:
    """Everything fixed between start_writing and the end of writing.

    ``bufs`` holds each compressed dataset's output buffers; ``WriterEngine.start``
    fills it before the session is used, and only this session's frames take them.
    """

    id: int
    config: WriterConfig
    codecs: dict[str, Codec]
    bufs: dict[str, queue.SimpleQueue[np.ndarray]] = field(default_factory=dict, repr=False)

    def stem(self, acq: str) -> str:
        f = self.config.file
        if f.name:
            base = f.name.rpartition(".")[0] if "." in f.name else f.name
        else:
            base = f.prefix
        acq = acq or self.config.acquisition_id
        if self.config.layout == "odin":  # odin's naming: the configured name, else the acquisition id
            return base or acq or "data"
        if acq and acq != base:
            base = f"{base}_{acq}" if base else acq
        return base or "data"

    def file_path(self, acq: str, file_index: int) -> str:
        return os.path.join(self.config.file.path, file_name(self.config, self.stem(acq), file_index))

    def master_path(self, acq: str) -> str:
        f = self.config.file
        return os.path.join(f.path, f"{self.stem(acq)}{f.postfix}_vds.{f.extension}")

    def paths(self, acq: str) -> list[str]:
        """Every name this rank creates for acquisition ``acq``: data files, their temp names, the VDS master.

        With ``frames`` 0 only the first file is known in advance (later ones, with
        ``blocks_per_file``, are checked when they open).
        """
        c = self.config
        d = c.process
        if c.frames:
            indices = [fi for fi in d.file_indices(c.frames) if fi % d.number == d.rank]
        else:
            indices = [d.rank]
        out = []
        for fi in indices:
            path = self.file_path(acq, fi)
            out += [path, path + c.file.temp_suffix] if c.file.temp_suffix else [path]
        if self.wants_master():
            out.append(self.master_path(acq))
        return out

    def existing(self, acq: str) -> str:
        """The first name of :meth:`paths` that already exists (``""`` if none, or when overwriting)."""
        if self.config.file.overwrite:
            return ""
        return next((p for p in self.paths(acq) if os.path.exists(p)), "")

    def wants_master(self) -> bool:
        c = self.config
        return bool(c.vds and c.frames and c.process.rank == 0 and len(c.process.file_indices(c.frames)) > 1)

    def frames_max(self) -> int:
        """Frames this rank writes in the acquisition (0 = unlimited)."""
        return self.config.process.frames_mine(self.config.frames)


def file_name(cfg: WriterConfig, stem: str, file_index: int) -> str:
    """``<stem><postfix>_%06d.<ext>`` numbered ``first_number + file_index`` (no number when use_numbers is off)."""
    f = cfg.file
    number = f"_{f.first_number + file_index:06d}" if f.use_numbers else ""
    return f"{stem}{f.postfix}{number}.{f.extension}"
