"""The ``elasticsearch`` output: events to Elasticsearch 8/9 through the official ``elasticsearch`` client.

The bulk requests, retries, dead letters and the index template are the shared machinery of
:mod:`flowpipe.plugins.outputs.bulk`; this module only makes the client and translates its
errors. The client's own retries are off (``max_retries=0``): the pipeline retries, and only
what failed. The client library is imported when the output opens: it takes about a second,
and every flowpipe command loads every plugin module.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from flowpipe import Output, hookimpl
from flowpipe.plugins.outputs.bulk import BulkOutput, Cluster, ClusterError, Connection, describe_answer

_FILTER_PATH = "errors,items.*.status,items.*.error"
_OPENSEARCH_HINT = " (for OpenSearch use `type: opensearch`)"


class ElasticsearchCluster(Cluster):
    """The bulk machinery's calls, made with ``elasticsearch.Elasticsearch``."""

    def __init__(self, connection: Connection) -> None:
        import elastic_transport
        import elasticsearch

        self._library = elasticsearch
        self._failures = (elasticsearch.ApiError, elastic_transport.TransportError)
        options: dict[str, Any] = {
            "basic_auth": connection.basic_auth,
            "api_key": connection.api_key,
            "http_compress": connection.compression,
            "request_timeout": connection.timeout,
            "connections_per_node": connection.connections,
            "max_retries": 0,
            "retry_on_timeout": False,
        }
        context = connection.ssl_context
        if context is not None and context.verify_mode == ssl.CERT_NONE:
            options.update(verify_certs=False, ssl_show_warn=False)  # the client overrides a context's
        elif context is not None:
            options["ssl_context"] = context
        self.client = elasticsearch.Elasticsearch(connection.hosts, **options)

    def bulk(self, body: bytes) -> dict[str, Any]:
        try:
            return self.client.bulk(operations=body, filter_path=_FILTER_PATH).body
        except self._failures as error:
            raise self._error(error) from error

    def template_exists(self, name: str) -> bool:
        try:
            return bool(self.client.indices.exists_index_template(name=name))
        except self._failures as error:
            raise self._error(error) from error

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        try:
            self.client.indices.put_index_template(name=name, body=body)
        except self._failures as error:
            raise self._error(error) from error

    def close(self) -> None:
        self.client.close()

    def _error(self, error: Exception) -> ClusterError:
        if isinstance(error, self._library.UnsupportedProductError):
            return ClusterError(f"{error}{_OPENSEARCH_HINT}", error.meta.status, wrong_server=True)
        if isinstance(error, self._library.ApiError):
            status = error.meta.status
            message = describe_answer(status, error.body)
            if status == 406 and "compatible-with" in message:  # how OpenSearch refuses the client
                message += _OPENSEARCH_HINT
            return ClusterError(message, status)
        cause = error.errors[0] if error.errors else error.__cause__  # no answer: connection, TLS, timeout
        detail = f"{type(error).__name__}: {error}"
        return ClusterError(f"{detail}: {cause}" if cause else detail)


class ElasticsearchOutput(BulkOutput):
    """Ship events to Elasticsearch in bulk, with an ECS index template, retries and a dead-letter file."""

    def connect(self, connection: Connection) -> Cluster:
        logging.getLogger("elastic_transport").setLevel(logging.ERROR)  # a line per request and per failure
        return ElasticsearchCluster(connection)


@hookimpl
def flowpipe_add_outputs() -> dict[str, type[Output]]:
    return {"elasticsearch": ElasticsearchOutput}
