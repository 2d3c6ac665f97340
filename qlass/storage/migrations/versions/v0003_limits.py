"""Limits: why each episode stopped, and what each run spent against its budget.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Episodes stored before this revision keep NULL: their trajectories did not record it.
    op.add_column("episodes", sa.Column("stop_reason", sa.String(length=20), nullable=True))
    op.add_column(
        "runs", sa.Column("spent_tokens", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("runs", sa.Column("spent_usd", sa.Double(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("spent_usd")
        batch.drop_column("spent_tokens")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("stop_reason")
