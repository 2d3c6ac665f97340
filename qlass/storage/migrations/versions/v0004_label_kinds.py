"""Label kinds: a label set is a Bellman Q (the paper), a Monte-Carlo mean of the leaf
rewards below a node, or the outcome reward of one trajectory (the value-signal baselines).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 13:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "uq_label_sets_run_id_gamma_normalize_intermediate_reward"
_NEW = "uq_label_sets_run_id_gamma_normalize_intermediate_reward_kind"


def upgrade() -> None:
    # Every label set stored before this revision is a Bellman one.
    with op.batch_alter_table("label_sets") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=20), server_default="bellman", nullable=False)
        )
        batch.drop_constraint(_OLD, type_="unique")
        batch.create_unique_constraint(
            _NEW, ["run_id", "gamma", "normalize", "intermediate_reward", "kind"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM label_sets WHERE kind != 'bellman'")
    with op.batch_alter_table("label_sets") as batch:
        batch.drop_constraint(_NEW, type_="unique")
        batch.create_unique_constraint(
            _OLD, ["run_id", "gamma", "normalize", "intermediate_reward"]
        )
        batch.drop_column("kind")
