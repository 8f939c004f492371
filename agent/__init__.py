"""The queue agent: turns SQS messages into SD runtime API calls, stores images, updates status, notifies.

It runs beside each runtime (a sidecar on EKS, a local process otherwise) and never imports torch.
"""
