using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Globalization;
using Treaty.Cli.Bench;
using Treaty.Server;

// What a transaction costs in messages and writes, counted by the coordinator itself: for every
// protocol, a fixed number of committed transactions (`--clients` at a time) and of aborted ones (one
// at a time: the last branch refuses its first operation — a NO vote, a failed try or action, a
// sender that rolled back), the coordinator's `Treaty` meter counts branch calls and store writes
// (forced or not) per transaction. Then the store's size per finished transaction. The coordinator
// runs in this process (its meter is only visible in-process); the transactions and the no-op
// participant are `treaty bench`'s (src/Treaty.Cli/Bench), which measures throughput, latency, CPU
// and memory with the coordinator as its own process.
//   dotnet run -c Release --project bench/Treaty.Bench -- [--protocols saga,tcc,2pc,3pc,msg]
//       [--branches 3] [--commits 200] [--aborts 200] [--clients 16] [--store sqlite|postgres --connection-string CS]
// With --store postgres the coordinator keeps its transactions in that database (use a fresh one:
// the run leaves its transactions there).
var branches = Arg("--branches", 3);
var commits = Arg("--commits", 200);
var aborts = Arg("--aborts", 200);
var clients = Arg("--clients", 16);
var protocols = ArgText("--protocols", "saga,tcc,2pc,3pc,msg").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
foreach (var protocol in protocols)
{
    if (!BenchSettings.Protocols.Contains(protocol))
    {
        Console.Error.WriteLine($"--protocols: unknown protocol '{protocol}' ({string.Join(", ", BenchSettings.Protocols)})");
        return 2;
    }
}

var store = ArgText("--store", TreatyServerDefaults.SqliteStore);
var connectionString = ArgText("--connection-string", "");
var dataDir = Path.Combine(Path.GetTempPath(), "treaty-bench-" + Guid.NewGuid().ToString("N")[..8]);
var coordinatorUrl = $"http://127.0.0.1:{Treaty.Cli.ChildProcess.FreePort()}";

using var counters = new Counters();
await using var participant = await NoOpParticipant.StartAsync(CancellationToken.None);
await using var coordinator = TreatyServer.CreateApp(
    new TreatyServerOptions
    {
        Urls = coordinatorUrl,
        DataDir = dataDir,
        Store = store,
        ConnectionString = store == TreatyServerDefaults.PostgresStore ? connectionString : null,
    },
    b => b.Logging.SetMinimumLevel(LogLevel.Warning));
await coordinator.StartAsync();
using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };

Console.WriteLine($"Treaty counts: {branches} branches, {commits} committed ({clients} at a time) and {aborts} aborted transactions per protocol, protocols {string.Join(",", protocols)}");
var failures = 0;
var counts = new List<(string Protocol, Counts Commit, Counts Abort)>();
foreach (var protocol in protocols)
{
    var workload = new BenchWorkload(protocol, branches, participant.Url, [coordinatorUrl]);
    var before = counters.Snapshot(protocol);
    await Parallel.ForEachAsync(Enumerable.Range(1, commits), new ParallelOptions { MaxDegreeOfParallelism = clients }, async (i, ct) =>
    {
        var status = await workload.RunAsync(http, i, abort: false, ct);
        if (status != BenchWorkload.Committed)
        {
            Interlocked.Increment(ref failures);
            Console.WriteLine($"{protocol}: a commit run ended {status}");
        }
    });
    await counters.SettleAsync(protocol);
    var commit = counters.Snapshot(protocol) - before;

    before = counters.Snapshot(protocol);
    for (var i = 0; i < aborts; i++)
    {
        var status = await workload.RunAsync(http, -i - 1, abort: true, CancellationToken.None);
        if (status != "aborted")
        {
            Interlocked.Increment(ref failures);
            Console.WriteLine($"{protocol}: an abort run ended {status}");
        }
    }

    await counters.SettleAsync(protocol); // presumed abort's rollbacks are not waited for by the API
    counts.Add((protocol, commit, counters.Snapshot(protocol) - before));
}

Console.WriteLine();
Console.WriteLine("Per transaction, counted by the coordinator (coordinator <-> participant calls; each call is a request and a response):");
Console.WriteLine("| protocol | committed: calls | forced writes | other writes | aborted: calls | forced writes | other writes |");
Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|");
foreach (var (protocol, commit, abort) in counts)
{
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"| {protocol} | {commit.CallsPer:0.00} | {commit.ForcedPer:0.00} | {commit.LazyPer:0.00} | {abort.CallsPer:0.00} | {abort.ForcedPer:0.00} | {abort.LazyPer:0.00} |"));
}

// Storage: every transaction of the run is still in the file. Disposing the coordinator closes the
// store, which folds the write-ahead log into treaty.db.
var stored = (await coordinator.Services.GetRequiredService<Treaty.Core.Engine.ITransactionStore>()
    .CountAsync(new Treaty.Core.Engine.TransactionQuery(), CancellationToken.None)).Total;
await coordinator.StopAsync();
await coordinator.DisposeAsync();
Console.WriteLine();
if (store == TreatyServerDefaults.SqliteStore)
{
    var fileBytes = new FileInfo(Path.Combine(dataDir, "treaty.db")).Length;
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"Storage: {stored:N0} transactions in {fileBytes / 1_048_576.0:0.0} MiB (treaty.db after checkpoint): {(stored == 0 ? 0 : fileBytes / (double)stored):0} bytes each, {(stored == 0 ? 0 : fileBytes / (double)stored * 1_000_000 / 1_073_741_824):0.00} GiB per million"));
}
else
{
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Storage: {stored:N0} transactions in the PostgreSQL database"));
}
try
{
    Directory.Delete(dataDir, recursive: true);
}
catch (IOException)
{
}

return failures == 0 ? 0 : 1;

int Arg(string name, int fallback) =>
    int.TryParse(ArgText(name, ""), CultureInfo.InvariantCulture, out var value) ? value : fallback;

string ArgText(string name, string fallback)
{
    var index = Array.IndexOf(args, name);
    return index >= 0 && index + 1 < args.Length ? args[index + 1] : fallback;
}

/// <summary>Counts of one protocol over a stretch of transactions; divided by the transactions that ended.</summary>
internal readonly record struct Counts(long Calls, long Forced, long Lazy, long Ended)
{
    public double CallsPer => Ended == 0 ? double.NaN : (double)Calls / Ended;

    public double ForcedPer => Ended == 0 ? double.NaN : (double)Forced / Ended;

    public double LazyPer => Ended == 0 ? double.NaN : (double)Lazy / Ended;

    public static Counts operator -(Counts a, Counts b) => new(a.Calls - b.Calls, a.Forced - b.Forced, a.Lazy - b.Lazy, a.Ended - b.Ended);
}

/// <summary>Listens to the coordinator's <c>Treaty</c> meter: branch calls, writes (forced or not) and ended transactions, per protocol.</summary>
internal sealed class Counters : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly ConcurrentDictionary<(string Protocol, string What), long> _totals = new();

    public Counters()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == TreatyTelemetryName && instrument.Name is "treaty.branch.calls" or "treaty.store.writes" or "treaty.transactions.finished")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string? protocol = null;
            var forced = false;
            foreach (var tag in tags)
            {
                switch (tag.Key)
                {
                    case "protocol":
                        protocol = tag.Value as string;
                        break;
                    case "forced":
                        forced = tag.Value is true;
                        break;
                }
            }

            var what = instrument.Name switch
            {
                "treaty.branch.calls" => "calls",
                "treaty.transactions.finished" => "ended",
                _ => forced ? "forced" : "lazy",
            };
            _totals.AddOrUpdate((protocol ?? "?", what), value, (_, total) => total + value);
        });
        _listener.Start();
    }

    private const string TreatyTelemetryName = "Treaty";

    public Counts Snapshot(string protocol) => new(Get(protocol, "calls"), Get(protocol, "forced"), Get(protocol, "lazy"), Get(protocol, "ended"));

    /// <summary>Waits until the calls nobody waits for (presumed abort's rollbacks) stop coming.</summary>
    public async Task SettleAsync(string protocol)
    {
        var last = -1L;
        while (Get(protocol, "calls") != last)
        {
            last = Get(protocol, "calls");
            await Task.Delay(TimeSpan.FromMilliseconds(300));
        }
    }

    private long Get(string protocol, string what) => _totals.GetValueOrDefault((protocol, what));

    public void Dispose() => _listener.Dispose();
}
