"""The ``opensearch`` output: events to OpenSearch through the ``opensearch-py`` client.

The same options and the same bulk, retry, dead-letter and template machinery as the
``elasticsearch`` output (:mod:`flowpipe.plugins.outputs.bulk`); this module only makes the
client and translates its errors. The client's own retries are off (``max_retries=0``). The
client library is imported when the output opens: every flowpipe command loads every plugin.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from flowpipe import Output, hookimpl
from flowpipe.plugins.outputs.bulk import BulkOutput, Cluster, ClusterError, Connection, describe_answer

_FILTER_PATH = "errors,items.*.status,items.*.error"


def _api_key_header(api_key: str | tuple[str, str]) -> str:
    if isinstance(api_key, tuple):
        api_key = base64.b64encode(":".join(api_key).encode()).decode()
    return f"ApiKey {api_key}"


class OpenSearchCluster(Cluster):
    """The bulk machinery's calls, made with ``opensearchpy.OpenSearch``."""

    def __init__(self, connection: Connection) -> None:
        import opensearchpy

        self._library = opensearchpy
        options: dict[str, Any] = {
            "http_auth": connection.basic_auth,
            "http_compress": connection.compression,
            "timeout": connection.timeout,
            "pool_maxsize": connection.connections,
            "max_retries": 0,
            "retry_on_timeout": False,
        }
        if connection.api_key is not None:
            options["headers"] = {"authorization": _api_key_header(connection.api_key)}
        if connection.ssl_context is not None:
            options["ssl_context"] = connection.ssl_context
        self.client = opensearchpy.OpenSearch(connection.hosts, **options)

    def bulk(self, body: bytes) -> dict[str, Any]:
        try:
            return self.client.bulk(body=body, params={"filter_path": _FILTER_PATH})
        except self._library.TransportError as error:
            raise self._error(error) from error

    def template_exists(self, name: str) -> bool:
        try:
            return bool(self.client.indices.exists_index_template(name=name))
        except self._library.TransportError as error:
            raise self._error(error) from error

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        try:
            self.client.indices.put_index_template(name=name, body=body)
        except self._library.TransportError as error:
            raise self._error(error) from error

    def close(self) -> None:
        self.client.close()

    def _error(self, error: Any) -> ClusterError:
        status = error.status_code
        if isinstance(error, self._library.ConnectionError) or not isinstance(status, int):
            return ClusterError(f"{type(error).__name__}: {error.info or error.error}")  # no answer
        return ClusterError(describe_answer(status, error.info), status)


class OpenSearchOutput(BulkOutput):
    """Ship events to OpenSearch in bulk, with an ECS index template, retries and a dead-letter file."""

    def connect(self, connection: Connection) -> Cluster:
        logging.getLogger("opensearch").setLevel(logging.ERROR)  # a line per request, a traceback per failure
        return OpenSearchCluster(connection)


@hookimpl
def flowpipe_add_outputs() -> dict[str, type[Output]]:
    return {"opensearch": OpenSearchOutput}
