from chworkers.cli.main import main

raise SystemExit(main())
