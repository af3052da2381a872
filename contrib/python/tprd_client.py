#!/usr/bin/python3
"""A tprd client for orchestration tools that needs no tprd stubs: it learns tprd's API from the
daemon itself through gRPC server reflection, and checks the standard health service.

Runs on Debian 12 with its own packages only: `apt-get install python3-grpcio python3-protobuf`.
(Debian 12 has no grpcio-reflection package, so the two small reflection and health protocols are
described below in a few lines of descriptor instead of generated code.)

    tprd_client.py [--socket PATH] health
    tprd_client.py [--socket PATH] services
    tprd_client.py [--socket PATH] call METHOD [JSON] [--max-messages N]

`call` takes the request as JSON in protobuf's JSON mapping (field names as in tprd.proto, or
their lowerCamelCase forms) and prints each response message as one line of JSON. METHOD is a
method of tprd.v1.Tprd (`GetDomain`) or a full name (`tprd.v1.Tprd/GetDomain`). Examples:

    tprd_client.py call ListDomains
    tprd_client.py call GetDomain '{"domain": "xp1"}'
    tprd_client.py call EnablePatching '{"domain": "xp1", "strategy": "STRATEGY_MMIO"}'
    tprd_client.py call WatchEvents '{}' --max-messages 5

Exit status: 0 success, 1 the call failed (the gRPC status code and tprd's message are printed,
as `tprd_client: NOT_FOUND: ...`), 2 bad usage or an API the daemon does not offer.
"""

import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

DEFAULT_SOCKET = "/run/tprd/tprd.sock"
TPRD_SERVICE = "tprd.v1.Tprd"
REFLECTION_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"


class UsageError(Exception):
    """Something the user asked for that this daemon does not offer."""


def _message_class(pool, full_name):
    descriptor = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


def _add_message(file_proto, name, fields):
    """fields: (name, number, type, label, type_name) tuples."""
    message = file_proto.message_type.add(name=name)
    for field_name, number, field_type, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name:
            field.type_name = type_name


def _protocol_pool():
    """The reflection (v1alpha) and health (v1) messages, only the fields this client uses; a
    parser ignores the others."""
    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    pool = descriptor_pool.DescriptorPool()

    reflection = descriptor_pb2.FileDescriptorProto(
        name="tprd_client/reflection.proto", package="grpc.reflection.v1alpha", syntax="proto3")
    _add_message(reflection, "ServerReflectionRequest", [
        ("host", 1, F.TYPE_STRING, opt, None),
        ("file_by_filename", 3, F.TYPE_STRING, opt, None),
        ("file_containing_symbol", 4, F.TYPE_STRING, opt, None),
        ("list_services", 7, F.TYPE_STRING, opt, None),
    ])
    _add_message(reflection, "FileDescriptorResponse", [
        ("file_descriptor_proto", 1, F.TYPE_BYTES, rep, None),
    ])
    _add_message(reflection, "ServiceResponse", [("name", 1, F.TYPE_STRING, opt, None)])
    _add_message(reflection, "ListServiceResponse", [
        ("service", 1, F.TYPE_MESSAGE, rep, ".grpc.reflection.v1alpha.ServiceResponse"),
    ])
    _add_message(reflection, "ErrorResponse", [
        ("error_code", 1, F.TYPE_INT32, opt, None),
        ("error_message", 2, F.TYPE_STRING, opt, None),
    ])
    _add_message(reflection, "ServerReflectionResponse", [
        ("valid_host", 1, F.TYPE_STRING, opt, None),
        ("file_descriptor_response", 4, F.TYPE_MESSAGE, opt,
         ".grpc.reflection.v1alpha.FileDescriptorResponse"),
        ("list_services_response", 6, F.TYPE_MESSAGE, opt,
         ".grpc.reflection.v1alpha.ListServiceResponse"),
        ("error_response", 7, F.TYPE_MESSAGE, opt, ".grpc.reflection.v1alpha.ErrorResponse"),
    ])
    pool.Add(reflection)

    health = descriptor_pb2.FileDescriptorProto(
        name="tprd_client/health.proto", package="grpc.health.v1", syntax="proto3")
    _add_message(health, "HealthCheckRequest", [("service", 1, F.TYPE_STRING, opt, None)])
    _add_message(health, "HealthCheckResponse", [("status", 1, F.TYPE_INT32, opt, None)])
    pool.Add(health)
    return pool


HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class TprdClient:
    """tprd's API as reflection describes it: `call(method, request_dict)`."""

    def __init__(self, socket_path=DEFAULT_SOCKET, timeout=120.0):
        self.channel = grpc.insecure_channel("unix:" + socket_path)
        self.timeout = timeout
        protocols = _protocol_pool()
        self._request = _message_class(protocols, "grpc.reflection.v1alpha.ServerReflectionRequest")
        self._response = _message_class(protocols,
                                        "grpc.reflection.v1alpha.ServerReflectionResponse")
        self._health_request = _message_class(protocols, "grpc.health.v1.HealthCheckRequest")
        self._health_response = _message_class(protocols, "grpc.health.v1.HealthCheckResponse")
        self._pool = None

    def health(self, service=""):
        """The health service's answer for `service` ("" = the server as a whole)."""
        check = self.channel.unary_unary(
            HEALTH_METHOD, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._health_response.FromString)
        answer = check(self._health_request(service=service), timeout=self.timeout)
        return HEALTH_STATUS.get(answer.status, str(answer.status))

    def _reflect(self, requests):
        info = self.channel.stream_stream(
            REFLECTION_METHOD, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=self._response.FromString)
        answers = list(info(iter(requests), timeout=self.timeout))
        for answer in answers:
            if answer.HasField("error_response"):
                raise UsageError("reflection: %s (code %d)" % (
                    answer.error_response.error_message, answer.error_response.error_code))
        return answers

    def services(self):
        """The services the daemon offers, by full name."""
        answers = self._reflect([self._request(list_services="*")])
        return [s.name for s in answers[0].list_services_response.service]

    def _descriptors(self):
        """A descriptor pool holding tprd's API, built from the files reflection returns."""
        if self._pool is not None:
            return self._pool
        files = {}
        wanted = [self._request(file_containing_symbol=TPRD_SERVICE)]
        while wanted:
            for answer in self._reflect(wanted):
                for blob in answer.file_descriptor_response.file_descriptor_proto:
                    proto = descriptor_pb2.FileDescriptorProto.FromString(blob)
                    files.setdefault(proto.name, proto)
            missing = {d for f in files.values() for d in f.dependency if d not in files}
            wanted = [self._request(file_by_filename=name) for name in sorted(missing)]
        pool = descriptor_pool.DescriptorPool()
        added = set()
        while len(added) < len(files):  # dependencies first
            ready = [name for name, f in files.items()
                     if name not in added and all(d in added for d in f.dependency)]
            if not ready:
                raise UsageError("reflection returned files whose imports cannot be resolved")
            for name in ready:
                pool.Add(files[name])
                added.add(name)
        self._pool = pool
        return pool

    def methods(self):
        service = self._descriptors().FindServiceByName(TPRD_SERVICE)
        return list(service.methods)

    def call(self, method, request=None, max_messages=None):
        """Calls `method` with `request` (a dict in protobuf's JSON mapping). Returns the response
        as a dict, or for a streaming method a list of at most max_messages dicts. Raises
        grpc.RpcError when tprd refuses, with its status code and message."""
        pool = self._descriptors()
        name = method.split("/")[-1]
        service = pool.FindServiceByName(TPRD_SERVICE)
        descriptor = service.methods_by_name.get(name)
        if descriptor is None:
            raise UsageError("%s has no method %s; it has: %s" % (
                TPRD_SERVICE, name, ", ".join(m.name for m in service.methods)))
        request_class = _message_class(pool, descriptor.input_type.full_name)
        response_class = _message_class(pool, descriptor.output_type.full_name)
        message = json_format.ParseDict(request or {}, request_class())
        path = "/%s/%s" % (TPRD_SERVICE, name)
        kwargs = dict(request_serializer=lambda m: m.SerializeToString(),
                      response_deserializer=response_class.FromString)
        as_dict = lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)
        if descriptor.server_streaming:
            stream = self.channel.unary_stream(path, **kwargs)(message, timeout=self.timeout)
            out = []
            for reply in stream:
                out.append(as_dict(reply))
                if max_messages is not None and len(out) >= max_messages:
                    stream.cancel()
                    break
            return out
        return as_dict(self.channel.unary_unary(path, **kwargs)(message, timeout=self.timeout))


def main(argv):
    parser = argparse.ArgumentParser(
        prog="tprd_client.py", description="tprd's API through gRPC server reflection")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="tprd's API socket")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("health", help="the standard health check of the whole server")
    commands.add_parser("services", help="services and tprd's methods, from reflection")
    call = commands.add_parser("call", help="call a tprd.v1.Tprd method")
    call.add_argument("method")
    call.add_argument("request", nargs="?", default="{}", help="the request as JSON")
    call.add_argument("--max-messages", type=int, default=None,
                      help="for a streaming method: stop after this many messages")
    args = parser.parse_args(argv)

    client = TprdClient(args.socket, args.timeout)
    try:
        if args.command == "health":
            status = client.health()
            print(status)
            return 0 if status == "SERVING" else 1
        if args.command == "services":
            for name in client.services():
                print(name)
            for method in client.methods():
                print("  %s(%s) returns (%s%s)" % (
                    method.name, method.input_type.full_name,
                    "stream " if method.server_streaming else "", method.output_type.full_name))
            return 0
        try:
            request = json.loads(args.request)
        except ValueError as error:
            raise UsageError("the request is not JSON: %s" % error)
        result = client.call(args.method, request, args.max_messages)
        for reply in (result if isinstance(result, list) else [result]):
            print(json.dumps(reply, sort_keys=True))
        return 0
    except grpc.RpcError as error:
        print("tprd_client: %s: %s" % (error.code().name, error.details()), file=sys.stderr)
        return 1
    except (UsageError, json_format.ParseError) as error:
        print("tprd_client: %s" % error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
