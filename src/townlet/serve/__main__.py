"""`python -m townlet.serve RUN_DIR ...`: the live view's child process beside `townlet train --serve`."""

from townlet.serve.launch import serve_in_background

if __name__ == "__main__":
    serve_in_background()
