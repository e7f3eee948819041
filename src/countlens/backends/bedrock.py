"""AWS Bedrock through the Converse API: one request shape for every model family.

Region, credentials and endpoint come from the standard AWS configuration (AWS_REGION,
profiles, AWS_ENDPOINT_URL_BEDROCK_RUNTIME, ...). botocore's own retries are off; the shared
policy retries throttling and 5xx.
"""

from __future__ import annotations

import os
from typing import Any

from countlens.backends.base import ApiBackend, ApiOptions, Completion, GenSettings
from countlens.backends.retry import Failure, http_failure
from countlens.backends.spec import ModelSpec
from countlens.errors import InputError

RETRYABLE_CODES = {"ThrottlingException", "TooManyRequestsException", "ServiceUnavailableException",
                   "InternalServerException", "ModelNotReadyException", "ModelTimeoutException",
                   "RequestTimeout", "RequestTimeoutException"}


def make_client(timeout: float):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
    session = boto3.Session()
    try:
        # AWS_REGION is the variable every newer AWS SDK reads; botocore itself reads AWS_DEFAULT_REGION.
        client = session.client("bedrock-runtime", config=config, region_name=os.environ.get("AWS_REGION") or None)
    except NoRegionError:
        raise InputError("bedrock: no AWS region configured; set AWS_REGION (or AWS_DEFAULT_REGION, or a "
                         "profile's region)") from None
    if session.get_credentials() is None:
        raise InputError("bedrock: no AWS credentials found (environment, profile or role)")
    return client


class BedrockBackend(ApiBackend):
    supports_prefill = True  # a trailing assistant message; models that refuse it yield API errors

    def __init__(self, spec: ModelSpec, options: ApiOptions | None = None, prompt_format: str = "auto",
                 client: Any = None) -> None:
        super().__init__(spec, options, prompt_format)
        self.client = client or make_client(self.options.retry.timeout)

    def identity(self) -> dict[str, Any]:
        return {"backend": "bedrock", "model": self.spec.name, "prompt_format": self.prompt_format}

    def _request(self, prompt: str, settings: GenSettings) -> Completion:
        messages: list[dict] = [{"role": "user", "content": [{"text": prompt}]}]
        if settings.prefill:
            messages.append({"role": "assistant", "content": [{"text": settings.answer_prefix}]})
        kwargs: dict[str, Any] = {"system": [{"text": settings.system}]} if settings.system else {}
        resp = self.client.converse(modelId=self.spec.name, messages=messages,
                                    inferenceConfig={"maxTokens": settings.max_new_tokens,
                                                     "temperature": settings.temperature}, **kwargs)
        blocks = resp.get("output", {}).get("message", {}).get("content", [])
        text = "".join(b["text"] for b in blocks if "text" in b)
        usage = resp.get("usage", {})
        prefix = settings.answer_prefix if settings.prefill else ""
        return Completion(text=prefix + text, input_tokens=usage.get("inputTokens", 0),
                          output_tokens=usage.get("outputTokens", 0), prefilled=settings.prefill,
                          stop_reason=resp.get("stopReason"), served_model=self.spec.name)

    def _classify(self, exc: BaseException) -> Failure | None:
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, ReadTimeoutError)

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            code, status = err.get("Code", "?"), meta.get("HTTPStatusCode")
            message = f"{code}: {err.get('Message', '')}"
            if status is None:
                return Failure(message[:500], code in RETRYABLE_CODES)
            f = http_failure(status, message, meta.get("HTTPHeaders"))
            return f if f.retryable or code not in RETRYABLE_CODES else Failure(f.message, True)
        if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError)):
            return http_failure(None, "request timed out", timeout=True)
        if isinstance(exc, (EndpointConnectionError, ConnectionClosedError)):
            return http_failure(None, f"connection error: {exc}", timeout=True)
        if isinstance(exc, BotoCoreError):
            return Failure(f"{type(exc).__name__}: {exc}"[:500], retryable=False)
        return None
