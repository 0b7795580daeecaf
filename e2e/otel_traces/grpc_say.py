# One unary isthmus.demo.Echo/Say call with a W3C traceparent in its metadata; prints the reply
# and the traceparent the service saw (its `x-sample-traceparent` response header).
import json, sys
import grpc


def enc(text):
    b = text.encode()
    return b"\x0a" + bytes([len(b)]) + b


def dec(msg):
    return msg[2:].decode()


target, traceparent = sys.argv[1], sys.argv[2]
with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as ch:
    say = ch.unary_unary("/isthmus.demo.Echo/Say", request_serializer=lambda b: b,
                         response_deserializer=lambda b: b)
    reply, call = say.with_call(enc("traced"), metadata=[("traceparent", traceparent)],
                                timeout=30)
    seen = dict(call.initial_metadata()).get("x-sample-traceparent")
    print(json.dumps({"reply": dec(reply), "traceparent": seen}))
