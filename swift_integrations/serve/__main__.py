"""``python -m swift_integrations.serve``: the server's command line (:func:`swift_integrations.serve.command.main`)."""

from swift_integrations.serve.command import main

if __name__ == "__main__":  # pragma: no cover
    main()
