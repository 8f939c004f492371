"""The HTTP API: Lambda handlers, request validation, and the local API Gateway."""
