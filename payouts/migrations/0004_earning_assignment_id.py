"""Earning keeps dispatch's assignment as a plain id: payouts sits below dispatch and reads none
of its tables (docs/ARCHITECTURE.md). The column, its index and the once-per-assignment
constraint stay as they are; only the foreign key constraint goes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("dispatch", "0003_span_indexes"),
        ("payouts", "0003_kicked_at"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.AlterField(
                    model_name="earning",
                    name="assignment",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="earnings",
                        to="dispatch.assignment",
                    ),
                ),
            ],
            state_operations=[
                migrations.RemoveConstraint(model_name="earning", name="earning_once_per_assignment"),
                migrations.RemoveField(model_name="earning", name="assignment"),
                migrations.AddField(
                    model_name="earning",
                    name="assignment_id",
                    field=models.BigIntegerField(blank=True, db_index=True, null=True),
                ),
                migrations.AddConstraint(
                    model_name="earning",
                    constraint=models.UniqueConstraint(
                        condition=models.Q(("assignment_id__isnull", False)),
                        fields=("assignment_id", "kind"),
                        name="earning_once_per_assignment",
                    ),
                ),
            ],
        ),
    ]
