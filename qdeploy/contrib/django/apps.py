from django.apps import AppConfig


class QdeployConfig(AppConfig):
    name = "qdeploy.contrib.django"
    label = "qdeploy"
    verbose_name = "qdeploy"
    default_auto_field = "django.db.models.AutoField"
