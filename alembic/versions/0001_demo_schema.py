"""The seed's schema: department, employee, the foreign key, an index on department name.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "department",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(45), nullable=False),
    )
    op.create_index("ix_department_name", "department", ["name"])
    op.create_table(
        "employee",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("department_id", sa.Integer, sa.ForeignKey("department.id"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("employee")
    op.drop_index("ix_department_name", table_name="department")
    op.drop_table("department")
