from django.apps import AppConfig


class KnowledgeBaseConfig(AppConfig):
    name = "pipelines.django_app"
    label = "knowledge_base"
    verbose_name = "Knowledge base (kb-pipeline)"
    default_auto_field = "django.db.models.BigAutoField"
