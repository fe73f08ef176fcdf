import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutWeight(_message.Message):
    __slots__ = ("variant", "weight")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    variant: str
    weight: int
    def __init__(self, variant: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class ChangeRecord(_message.Message):
    __slots__ = ("version", "at", "actor", "action", "flag_key", "flag_set_id", "reason", "before", "after")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FLAG_KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    version: int
    at: _timestamp_pb2.Timestamp
    actor: str
    action: str
    flag_key: str
    flag_set_id: str
    reason: str
    before: _struct_pb2.Struct
    after: _struct_pb2.Struct
    def __init__(self, version: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., flag_key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., reason: _Optional[str] = ..., before: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., after: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class FlagSummary(_message.Message):
    __slots__ = ("key", "flag_set_id", "kind", "owner", "description", "removal", "state", "default_variant", "rollout", "last_change", "stale", "origin", "variants")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REMOVAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    kind: str
    owner: str
    description: str
    removal: str
    state: str
    default_variant: str
    rollout: _containers.RepeatedCompositeFieldContainer[RolloutWeight]
    last_change: ChangeRecord
    stale: bool
    origin: str
    variants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., kind: _Optional[str] = ..., owner: _Optional[str] = ..., description: _Optional[str] = ..., removal: _Optional[str] = ..., state: _Optional[str] = ..., default_variant: _Optional[str] = ..., rollout: _Optional[_Iterable[_Union[RolloutWeight, _Mapping]]] = ..., last_change: _Optional[_Union[ChangeRecord, _Mapping]] = ..., stale: _Optional[bool] = ..., origin: _Optional[str] = ..., variants: _Optional[_Iterable[str]] = ...) -> None: ...

class ListFlagsRequest(_message.Message):
    __slots__ = ("flag_set_id",)
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    flag_set_id: str
    def __init__(self, flag_set_id: _Optional[str] = ...) -> None: ...

class ListFlagsResponse(_message.Message):
    __slots__ = ("flags", "version")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[FlagSummary]
    version: int
    def __init__(self, flags: _Optional[_Iterable[_Union[FlagSummary, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class GetFlagRequest(_message.Message):
    __slots__ = ("key", "flag_set_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ...) -> None: ...

class GetFlagResponse(_message.Message):
    __slots__ = ("flag", "definition", "version")
    FLAG_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    flag: FlagSummary
    definition: _struct_pb2.Struct
    version: int
    def __init__(self, flag: _Optional[_Union[FlagSummary, _Mapping]] = ..., definition: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class SetFlagStateRequest(_message.Message):
    __slots__ = ("key", "flag_set_id", "state", "reason", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    state: str
    reason: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetDefaultVariantRequest(_message.Message):
    __slots__ = ("key", "flag_set_id", "variant", "reason", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    variant: str
    reason: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., variant: _Optional[str] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetRolloutRequest(_message.Message):
    __slots__ = ("key", "flag_set_id", "weights", "reason", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    weights: _containers.RepeatedCompositeFieldContainer[RolloutWeight]
    reason: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[RolloutWeight, _Mapping]]] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class PutFlagRequest(_message.Message):
    __slots__ = ("key", "flag_set_id", "definition", "reason", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    definition: _struct_pb2.Struct
    reason: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., definition: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteFlagRequest(_message.Message):
    __slots__ = ("key", "flag_set_id", "reason", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    reason: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class ReleaseOverrideRequest(_message.Message):
    __slots__ = ("key", "flag_set_id", "reason", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FLAG_SET_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    flag_set_id: str
    reason: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., flag_set_id: _Optional[str] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class MutationResponse(_message.Message):
    __slots__ = ("version", "change")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    version: int
    change: ChangeRecord
    def __init__(self, version: _Optional[int] = ..., change: _Optional[_Union[ChangeRecord, _Mapping]] = ...) -> None: ...

class ListChangesRequest(_message.Message):
    __slots__ = ("flag_key", "from_version", "to_version", "limit")
    FLAG_KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    flag_key: str
    from_version: int
    to_version: int
    limit: int
    def __init__(self, flag_key: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListChangesResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[ChangeRecord]
    def __init__(self, changes: _Optional[_Iterable[_Union[ChangeRecord, _Mapping]]] = ...) -> None: ...

class WatchChangesRequest(_message.Message):
    __slots__ = ("after_version", "flag_key")
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FLAG_KEY_FIELD_NUMBER: _ClassVar[int]
    after_version: int
    flag_key: str
    def __init__(self, after_version: _Optional[int] = ..., flag_key: _Optional[str] = ...) -> None: ...
