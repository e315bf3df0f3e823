# A grading image: the grader and the reference, nothing of the course's solutions.
# Build: docker build -t course-grader .     (not built in this project's CI: no Docker engine there)
# Use:   see "Isolation and threat model" in README.md (one container per submission, --network none).
FROM python:3.11-slim
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /opt/grader
COPY pyproject.toml README.md ./
COPY grader ./grader
COPY reference ./reference
RUN pip install --no-cache-dir . && useradd --create-home student
USER student
ENTRYPOINT []
