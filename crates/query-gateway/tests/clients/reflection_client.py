"""Calls Wick's gRPC API the way a generic tool does: without the proto file, discovering the
services and message types through server reflection (grpcio-reflection), then calling
GetCandles and the health check with dynamically built messages.

usage: reflection_client.py HOST:PORT INSTRUMENT INTERVAL START_MS LIMIT
Prints {"services": [...], "health": ..., "candles": [...]} as JSON.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def call(channel, pool, method_path, request_type, response_type, fields):
    request_class = GetMessageClass(pool.FindMessageTypeByName(request_type))
    response_class = GetMessageClass(pool.FindMessageTypeByName(response_type))
    stub = channel.unary_unary(
        method_path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
    )
    return stub(request_class(**fields), timeout=10)


def main():
    target, instrument, interval, start_ms, limit = sys.argv[1:6]
    channel = grpc.insecure_channel(target)
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    services = sorted(database.get_services())
    service = pool.FindServiceByName("wick.v1.CandleService")
    method = service.methods_by_name["GetCandles"]
    response = call(
        channel,
        pool,
        "/wick.v1.CandleService/GetCandles",
        method.input_type.full_name,
        method.output_type.full_name,
        {"instrument": instrument, "interval": interval, "start_time_ms": int(start_ms), "limit": int(limit)},
    )
    health = call(
        channel, pool, "/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse",
        {"service": "wick.v1.CandleService"},
    )
    candles = json_format.MessageToDict(response, preserving_proto_field_name=True).get("candles", [])
    print(json.dumps({
        "services": services,
        "methods": [m.name for m in service.methods],
        "health": json_format.MessageToDict(health).get("status"),
        "candles": candles,
    }))


if __name__ == "__main__":
    main()
