using BenchmarkDotNet.Running;

// Every benchmark of this assembly; pick with --filter (e.g. --filter '*Decide*'), list with --list flat.
// Run in Release: dotnet run -c Release --project bench/Treaty.Bench.Micro -- --filter '*'
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
