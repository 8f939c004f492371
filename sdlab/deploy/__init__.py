"""The AWS path: IAM, the Lambda package and function, API Gateway, ECR, the EKS cluster files, plan and teardown.

Every AWS call goes through `sdlab.aws.client()`, so the same functions run against the moto server (tests,
notebook 13 with target="local") and against a real account. Nothing here is imported by `import sdlab`.
"""
