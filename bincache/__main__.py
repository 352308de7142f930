from bincache.cli.main import main

raise SystemExit(main())
