"""The knowledge base as the old Django application reads it: unmanaged models over the
pipeline's tables, for a Django project to add to INSTALLED_APPS ("pipelines.django_app").

Only Django and pgvector's Django support are needed (`pip install "kb-pipeline[django]"`);
nothing else of the pipeline is imported. The README's "Pointing the Django app at the
knowledge base" says which database role to use and how row-level security applies to it.
"""
