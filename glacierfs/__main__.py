from glacierfs.cli import main

raise SystemExit(main())
