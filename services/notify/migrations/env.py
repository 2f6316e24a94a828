from alembic import context

from cso.database import run_env

run_env(context.config)
