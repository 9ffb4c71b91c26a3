from instructkit.cli import main

raise SystemExit(main())
