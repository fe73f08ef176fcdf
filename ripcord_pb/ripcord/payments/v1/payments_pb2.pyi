import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Card(_message.Message):
    __slots__ = ("token", "bin", "last4", "currency")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    BIN_FIELD_NUMBER: _ClassVar[int]
    LAST4_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    token: str
    bin: str
    last4: str
    currency: str
    def __init__(self, token: _Optional[str] = ..., bin: _Optional[str] = ..., last4: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("idempotency_key", "merchant_id", "customer_id", "amount_minor", "currency", "card", "dcc_opt_in")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    DCC_OPT_IN_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    merchant_id: str
    customer_id: str
    amount_minor: int
    currency: str
    card: Card
    dcc_opt_in: bool
    def __init__(self, idempotency_key: _Optional[str] = ..., merchant_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., card: _Optional[_Union[Card, _Mapping]] = ..., dcc_opt_in: _Optional[bool] = ...) -> None: ...

class FxQuote(_message.Message):
    __slots__ = ("quote_id", "from_currency", "to_currency", "rate", "markup", "source", "converted_amount_minor", "as_of")
    QUOTE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TO_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    MARKUP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONVERTED_AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    quote_id: str
    from_currency: str
    to_currency: str
    rate: str
    markup: str
    source: str
    converted_amount_minor: int
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, quote_id: _Optional[str] = ..., from_currency: _Optional[str] = ..., to_currency: _Optional[str] = ..., rate: _Optional[str] = ..., markup: _Optional[str] = ..., source: _Optional[str] = ..., converted_amount_minor: _Optional[int] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("payment_id", "status", "decline_reason", "engine", "acquirer", "flag_version", "experiment_variant", "fx_quote", "replayed")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DECLINE_REASON_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ACQUIRER_FIELD_NUMBER: _ClassVar[int]
    FLAG_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    FX_QUOTE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    status: str
    decline_reason: str
    engine: str
    acquirer: str
    flag_version: int
    experiment_variant: str
    fx_quote: FxQuote
    replayed: bool
    def __init__(self, payment_id: _Optional[str] = ..., status: _Optional[str] = ..., decline_reason: _Optional[str] = ..., engine: _Optional[str] = ..., acquirer: _Optional[str] = ..., flag_version: _Optional[int] = ..., experiment_variant: _Optional[str] = ..., fx_quote: _Optional[_Union[FxQuote, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GetPaymentRequest(_message.Message):
    __slots__ = ("payment_id",)
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    def __init__(self, payment_id: _Optional[str] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("payment_id", "idempotency_key", "merchant_id", "customer_id", "amount_minor", "currency", "status", "engine", "acquirer", "card_bin", "card_last4", "fx_quote", "created_at", "experiment_variant", "conversion")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    ACQUIRER_FIELD_NUMBER: _ClassVar[int]
    CARD_BIN_FIELD_NUMBER: _ClassVar[int]
    CARD_LAST4_FIELD_NUMBER: _ClassVar[int]
    FX_QUOTE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    idempotency_key: str
    merchant_id: str
    customer_id: str
    amount_minor: int
    currency: str
    status: str
    engine: str
    acquirer: str
    card_bin: str
    card_last4: str
    fx_quote: FxQuote
    created_at: _timestamp_pb2.Timestamp
    experiment_variant: str
    conversion: str
    def __init__(self, payment_id: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., merchant_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., status: _Optional[str] = ..., engine: _Optional[str] = ..., acquirer: _Optional[str] = ..., card_bin: _Optional[str] = ..., card_last4: _Optional[str] = ..., fx_quote: _Optional[_Union[FxQuote, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., experiment_variant: _Optional[str] = ..., conversion: _Optional[str] = ...) -> None: ...

class RecordConversionRequest(_message.Message):
    __slots__ = ("payment_id", "outcome")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    outcome: str
    def __init__(self, payment_id: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...

class RecordConversionResponse(_message.Message):
    __slots__ = ("payment_id", "experiment_variant", "outcome")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    experiment_variant: str
    outcome: str
    def __init__(self, payment_id: _Optional[str] = ..., experiment_variant: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...
