"""comms: a brand's multi-channel message sequences over gRPC, with an HTTP/JSON gateway."""
