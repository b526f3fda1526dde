"""OpenAI's fine-tuning API, the server's side: uploaded files, jobs kept in SQLite under `$HOTLORA_HOME`
(`database`, `files`, `jobs`), and the runner that trains each job in a worker subprocess (`worker`,
`command`, `progress`). Torch-free: the trainer runs in its own process, which the server never imports.
"""

from .command import Launch
from .database import Database, new_id
from .files import FileRecord, FileStore
from .jobs import ACTIVE, TERMINAL, Event, EventRecord, JobRecord, JobStore
from .worker import JobRunner

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "Database",
    "Event",
    "EventRecord",
    "FileRecord",
    "FileStore",
    "JobRecord",
    "JobRunner",
    "JobStore",
    "Launch",
    "new_id",
]
