from lowbit.cli.main import main

raise SystemExit(main())
