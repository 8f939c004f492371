"""The moto server, with resource-level IAM checks for SNS and DynamoDB too (`python -m tests.iam.moto_enforcing`).

moto enforces IAM policies (once `/moto-api/reset-auth` lowers the unauthenticated-request allowance) by action
for every service, and by resource for S3 and SQS only: SNS and DynamoDB calls are checked against the resource
`"*"`, which a least-privilege statement naming a topic or table never matches. This launcher gives those two
the resource AWS would check (the topic ARN; the table or index ARN), then runs moto's own server unchanged.
Only the emulator is touched: the project's code runs as it would against AWS.
"""

from __future__ import annotations

from typing import Any

from moto.dynamodb.responses import DynamoHandler
from moto.server import main
from moto.sns.responses import SNSResponse
from moto.utilities.utils import get_partition


def _sns_resource(self: Any) -> str:
    return str(self._get_param("TopicArn") or self._get_param("TargetArn") or "*")


def _dynamodb_resource(self: Any) -> str:
    params = getattr(self, "params", None) or {}
    table = params.get("TableName")
    if not table:
        return "*"
    arn = f"arn:{get_partition(self.region)}:dynamodb:{self.region}:{self.current_account}:table/{table}"
    return f"{arn}/index/{params['IndexName']}" if params.get("IndexName") else arn


SNSResponse._determine_resource = _sns_resource  # type: ignore[attr-defined]
DynamoHandler._determine_resource = _dynamodb_resource  # type: ignore[attr-defined]

if __name__ == "__main__":
    main()
