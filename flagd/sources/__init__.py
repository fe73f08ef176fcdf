"""Where flag definitions come from. Today: files on disk (JSON or YAML), watched for edits."""

from flagd.sources.file import FileSource, SourceStatus, parse_uri

__all__ = ["FileSource", "SourceStatus", "parse_uri"]
