using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Spectre.Console;
using Treaty.Cli.Bench;

namespace Treaty.Cli;

/// <summary>
/// <c>treaty bench</c>: the coordinator's throughput on this machine, on loopback. A no-op participant
/// in this process; <c>treaty serve</c> as a child process on a temp data directory (or a PostgreSQL
/// store); N clients each submitting a transaction of the protocol with <c>?wait=30s</c> and the
/// next when it ends; then, in the same run, the uncoordinated baseline (the clients call the
/// participant endpoints themselves); then, with <c>--peer masstransit</c>, the peer
/// (<c>bench/Treaty.Bench.Peer</c>) as a child process. Every child is stopped by pid at the end,
/// on failure and on Ctrl+C. Exits 0 when nothing failed, 1 when the run failed or had errors, 2 on
/// a usage error (checked before anything starts).
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var protocol = new Option<string?>("--protocol") { Description = "saga (default), tcc, 2pc, 3pc or msg" };
        var branches = new Option<string?>("--branches") { Description = "Branches per transaction, 1 to 64 (default 3); the baseline makes as many calls" };
        var concurrency = new Option<string?>("--concurrency") { Description = "Clients, each with one transaction in flight (default 64)" };
        var duration = new Option<string?>("--duration") { Description = "The measured window, e.g. 10s (default) or 1m" };
        var warmup = new Option<string?>("--warmup") { Description = "Load before the window, not measured (default 20s per coordinator, the time a fresh coordinator needs to compile its hot path; 0 for none)" };
        var store = new Option<string?>("--store") { Description = "The coordinator's store: sqlite (default, a temp directory) or postgres (needs --connection-string)" };
        var connectionString = new Option<string?>("--connection-string") { Description = "The PostgreSQL store's connection string, for --store postgres" };
        var peer = new Option<string?>("--peer") { Description = "Also run a peer on the same participant and compare: masstransit (needs a clone of the repository: bench/Treaty.Bench.Peer)" };
        var rabbitMq = new Option<string?>("--rabbitmq") { Description = "The RabbitMQ broker for --peer masstransit, e.g. amqp://guest:guest@127.0.0.1:5672/" };
        var json = new Option<string?>("--json") { Description = "Also write the results to this file as JSON" };
        var coordinators = new Option<string?>("--coordinators") { Description = $"Coordinator instances on the one PostgreSQL store, 1 to {BenchSettings.MaxCoordinators} (default 1; above 1 needs --store postgres); transactions go to them in turn" };
        var inFlight = new Option<string?>("--in-flight") { Description = $"Also hold this many sagas in flight at once (their first call held by the participant) and read the coordinator's memory, 1 to {BenchSettings.MaxInFlight:N0}" };
        var command = new Command("bench", "Measure the coordinator on loopback: committed transactions/s, latency, its CPU and memory, against the uncoordinated baseline")
        {
            protocol, branches, concurrency, duration, warmup, store, connectionString, peer, rabbitMq, json, coordinators, inFlight,
        };
        command.SetAction((parse, cancellationToken) =>
        {
            // Checked before anything starts: a wrong flag costs no process.
            var (settings, error) = BenchSettings.Parse(
                new BenchSettings.Raw(parse.GetValue(protocol), parse.GetValue(branches), parse.GetValue(concurrency), parse.GetValue(duration),
                    parse.GetValue(warmup), parse.GetValue(store), parse.GetValue(connectionString), parse.GetValue(peer), parse.GetValue(rabbitMq),
                    parse.GetValue(json), parse.GetValue(coordinators), parse.GetValue(inFlight)),
                Environment.CurrentDirectory);
            if (settings is null)
            {
                CliConsole.Error(parse).MarkupLineInterpolated($"[red]{error}[/]");
                return Task.FromResult(CliConsole.UsageError);
            }

            return RunAsync(settings, CliConsole.Out(parse), CliConsole.Error(parse), cancellationToken);
        });
        return command;
    }

    /// <summary><c>treaty serve</c>'s arguments for the bench's coordinator (the connection string
    /// travels in the environment, <see cref="ServeEnvironment"/>, never on the command line).</summary>
    internal static IReadOnlyList<string> ServeArguments(BenchSettings settings, string url, string dataDir, int instance = 0)
    {
        List<string> args = ["serve", "--urls", url, "--data-dir", dataDir];
        if (settings.Store == "postgres")
        {
            args.AddRange(["--store", "postgres", "--instance-id", "bench-" + instance.ToString(CultureInfo.InvariantCulture)]);
        }

        return args;
    }

    /// <summary>The coordinator's environment: the connection string, out of the process list.</summary>
    internal static Dictionary<string, string> ServeEnvironment(BenchSettings settings) =>
        settings.Store == "postgres"
            ? new Dictionary<string, string> { [ServeCommand.ConnectionStringVariable] = settings.ConnectionString! }
            : [];

    public static async Task<int> RunAsync(BenchSettings settings, IAnsiConsole console, IAnsiConsole errors, CancellationToken cancellationToken)
    {
        var dataDir = Path.Combine(Path.GetTempPath(), "treaty-bench-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dataDir);
        var coordinatorUrls = Enumerable.Range(0, settings.Coordinators).Select(_ => $"http://127.0.0.1:{ChildProcess.FreePort()}").ToList();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        var coordinators = new List<ChildProcess>();
        void KillCoordinators()
        {
            lock (coordinators)
            {
                foreach (var child in coordinators)
                {
                    child.Kill();
                }
            }
        }

        // Ctrl+C and SIGTERM: the children die at once, by pid, whatever the command is awaiting;
        // then the command unwinds. Handled here: left to System.CommandLine, a SIGINT ended the
        // process with 130 without cancelling the action's token, and the coordinator outlived it.
        using var interrupted = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        void Interrupt(PosixSignalContext signal)
        {
            signal.Cancel = true;
            KillCoordinators();
            interrupted.Cancel();
        }

        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Interrupt);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Interrupt);
        using var killOnCancel = cancellationToken.Register(KillCoordinators);
        cancellationToken = interrupted.Token;
        try
        {
            await using var participant = await NoOpParticipant.StartAsync(cancellationToken);
            for (var k = 0; k < coordinatorUrls.Count; k++)
            {
                var child = ChildProcess.StartDotnet(coordinatorUrls.Count == 1 ? "coordinator" : $"coordinator-{k}", typeof(ChildProcess).Assembly.Location,
                    ServeArguments(settings, coordinatorUrls[k], Path.Combine(dataDir, k.ToString(CultureInfo.InvariantCulture)), k), ServeEnvironment(settings));
                lock (coordinators)
                {
                    coordinators.Add(child);
                }

                console.MarkupLineInterpolated($"coordinator  pid {child.Id}  treaty serve --urls {coordinatorUrls[k]} ({(settings.Store == "postgres" ? "PostgreSQL store" : "SQLite in " + dataDir)})");
            }

            console.MarkupLineInterpolated($"participant  {participant.Url} (in this process, pid {Environment.ProcessId})");
            try
            {
                for (var k = 0; k < coordinatorUrls.Count; k++)
                {
                    await coordinators[k].WaitHealthyAsync(http, coordinatorUrls[k] + "/healthz", TimeSpan.FromSeconds(60), cancellationToken);
                }
            }
            catch (Exception ex) when (ex is InvalidOperationException or TimeoutException)
            {
                errors.MarkupLineInterpolated($"[red]The coordinator did not start.[/]");
                if (settings.Store == "postgres")
                {
                    errors.MarkupLine("[red]treaty serve --store postgres failed: check --connection-string and that the server answers; a treaty build whose serve does not know --store has no PostgreSQL store yet (its output below says so).[/]");
                }

                errors.WriteLine(ex.Message);
                return CliConsole.Failure;
            }

            var workload = new BenchWorkload(settings.Protocol, settings.Branches, participant.Url, coordinatorUrls);
            var pids = coordinators.Select(c => c.Id).ToList();
            TimeSpan CpuOfCoordinators() => pids.Aggregate(TimeSpan.Zero, (sum, pid) => sum + ProcessStats.CpuTime(pid));
            // The SQLite store's writer thread, by the name GroupCommitWriter gives it (internal to the
            // store; the bench test fails if the two part). The PostgreSQL store has none.
            TimeSpan? CpuOfWriters() => pids.Aggregate((TimeSpan?)null,
                (sum, pid) => ProcessStats.ThreadCpuTime(pid, "treaty-writer") is { } cpu ? (sum ?? TimeSpan.Zero) + cpu : sum);
            TimeSpan cpuBefore = default, cpuAfter = default;
            TimeSpan? writerBefore = null, writerAfter = null;
            console.MarkupLineInterpolated($"Treaty {settings.Protocol}: {settings.Concurrency} clients, {settings.Warmup.TotalSeconds:0.###} s warm-up, {settings.Duration.TotalSeconds:0.###} s measured…");
            var treaty = await LoadRun.RunAsync(settings.Concurrency, settings.Warmup, settings.Duration,
                async (i, ct) =>
                {
                    var status = await workload.RunAsync(http, i, abort: false, ct);
                    return status == BenchWorkload.Committed ? null : $"a transaction ended {status}";
                },
                () => (cpuBefore, writerBefore) = (CpuOfCoordinators(), CpuOfWriters()),
                () => (cpuAfter, writerAfter) = (CpuOfCoordinators(), CpuOfWriters()), cancellationToken);
            if (coordinators.FirstOrDefault(c => c.HasExited) is { } exited)
            {
                errors.MarkupLine("[red]The coordinator exited during the run.[/]");
                errors.WriteLine(exited.Output);
                return CliConsole.Failure;
            }

            // With several instances: the largest one's peak (each is its own process).
            var rssMb = pids.Max(ProcessStats.PeakRssMb);
            ReportErrors(errors, "Treaty", treaty);

            InFlightResult? held = null;
            if (settings.InFlight > 0)
            {
                console.MarkupLineInterpolated($"In flight: {settings.InFlight:N0} sagas submitted, each one's first call held by the participant…");
                held = await InFlightRun.RunAsync(settings.InFlight, settings.Concurrency, workload, participant.Holds, http, pids, cancellationToken);
                if (held.Errors > 0)
                {
                    errors.MarkupLineInterpolated($"[red]In flight: {held.Errors} error(s); the first: {held.FirstError}[/]");
                }
            }

            console.MarkupLineInterpolated($"Baseline: the same clients call {settings.Branches} participant endpoint(s) themselves…");
            var baseline = await LoadRun.RunAsync(settings.Concurrency, settings.Warmup, settings.Duration,
                (i, ct) => workload.BaselineAsync(http, i, ct), null, null, cancellationToken);
            ReportErrors(errors, "Baseline", baseline);

            // The peer runs alone: the coordinators are stopped first, so they share no CPU.
            lock (coordinators)
            {
                foreach (var child in coordinators)
                {
                    child.Dispose();
                }

                coordinators.Clear();
            }

            PeerResult? peer = null;
            var peerFailed = false;
            if (settings.Peer is not null)
            {
                console.MarkupLineInterpolated($"Peer {settings.Peer}: dotnet run -c Release --project {settings.PeerProject} (it builds first)…");
                try
                {
                    peer = await PeerBench.RunAsync(settings, participant.Url,
                        child => console.MarkupLineInterpolated($"peer         pid {child.Id}"), cancellationToken);
                }
                catch (InvalidOperationException ex)
                {
                    errors.MarkupLineInterpolated($"[red]The peer failed.[/]");
                    errors.WriteLine(ex.Message);
                    peerFailed = true;
                }
            }

            var report = new BenchReport
            {
                Protocol = settings.Protocol,
                Branches = settings.Branches,
                Concurrency = settings.Concurrency,
                DurationSeconds = settings.Duration.TotalSeconds,
                WarmupSeconds = settings.Warmup.TotalSeconds,
                Store = settings.Store,
                Coordinators = settings.Coordinators,
                Date = TimeProvider.System.GetUtcNow().ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture),
                Cores = Environment.ProcessorCount,
                Throughput = treaty.Throughput,
                P50Ms = treaty.Percentile(0.50),
                P95Ms = treaty.Percentile(0.95),
                P99Ms = treaty.Percentile(0.99),
                CpuUsPerTx = treaty.Completed == 0 ? null : (cpuAfter - cpuBefore).TotalMicroseconds / treaty.Completed,
                WriterCpuUsPerTx = treaty.Completed == 0 || writerBefore is not { } wb || writerAfter is not { } wa
                    ? null
                    : (wa - wb).TotalMicroseconds / treaty.Completed,
                RssMb = rssMb,
                Committed = treaty.Completed,
                Errors = treaty.Errors,
                BaselineThroughput = baseline.Throughput,
                BaselineP50Ms = baseline.Percentile(0.50),
                BaselineP95Ms = baseline.Percentile(0.95),
                BaselineP99Ms = baseline.Percentile(0.99),
                BaselineErrors = baseline.Errors,
                BaselineRatio = BenchReport.Ratio(treaty.Throughput, baseline.Throughput),
                Peer = settings.Peer,
                PeerThroughput = peer?.Throughput,
                PeerP50Ms = peer?.P50Ms,
                PeerP95Ms = peer?.P95Ms,
                PeerP99Ms = peer?.P99Ms,
                PeerCpuUsPerTx = peer?.CpuUsPerTx,
                PeerCpuScope = peer?.CpuScope,
                PeerRssMb = peer?.RssMb,
                PeerErrors = peer?.Errors,
                PeerRatio = peer is null ? null : BenchReport.Ratio(treaty.Throughput, peer.Throughput),
                InFlight = held?.InFlight,
                InFlightHeldCalls = held?.Held,
                InFlightRssMb = held?.RssMb,
                InFlightSubmitSeconds = held?.SubmitSeconds,
                InFlightDrainSeconds = held?.DrainSeconds,
                InFlightCommitted = held?.Committed,
                InFlightErrors = held?.Errors,
            };
            report.Write(console);
            if (settings.JsonFile is not null)
            {
                await File.WriteAllTextAsync(settings.JsonFile, JsonSerializer.Serialize(report, BenchJsonContext.Default.BenchReport) + "\n", cancellationToken);
                console.MarkupLineInterpolated($"JSON: {settings.JsonFile}");
            }

            return treaty.Errors == 0 && baseline.Errors == 0 && treaty.Completed > 0 && !peerFailed && (held?.Errors ?? 0) == 0 ? 0 : CliConsole.Failure;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            errors.MarkupLine("[yellow]Cancelled; the coordinator and the peer were stopped.[/]");
            return CliConsole.Failure;
        }
        finally
        {
            lock (coordinators)
            {
                foreach (var child in coordinators)
                {
                    child.Dispose(); // SIGKILL by pid if it still runs
                }
            }
            try
            {
                Directory.Delete(dataDir, recursive: true);
            }
            catch (IOException)
            {
                // best effort: a temp directory
            }
        }
    }

    private static void ReportErrors(IAnsiConsole errors, string run, LoadResult result)
    {
        if (result.Errors > 0)
        {
            errors.MarkupLineInterpolated($"[red]{run}: {result.Errors} error(s) in the window; the first: {result.FirstError}[/]");
        }
    }
}
