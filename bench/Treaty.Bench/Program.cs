using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Treaty.Server;

// Load generator: N concurrent clients run 3-branch transactions of every protocol (durable: SQLite
// WAL + synchronous=FULL) against no-op participants on loopback, each waiting for its transaction
// to end; then, in the same run, the uncoordinated baseline (the clients call the three
// participants themselves). For every protocol it also counts, from the coordinator's own
// telemetry, the messages and forced writes per committed and per aborted transaction.
//   dotnet run -c Release --project bench/Treaty.Bench -- [--clients 64] [--seconds 10] [--warmup 2]
//       [--protocols saga,tcc,2pc,3pc,msg] [--aborts 200] [--store sqlite|postgres --connection-string CS]
// With --store postgres the coordinator keeps its transactions in that database (use a fresh one:
// the run leaves its transactions there).
var clients = Arg("--clients", 64);
var seconds = Arg("--seconds", 10);
var warmup = Arg("--warmup", 2);
var abortRuns = Arg("--aborts", 200);
var protocols = ArgText("--protocols", "saga,tcc,2pc,3pc,msg").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

var store = ArgText("--store", TreatyServerDefaults.SqliteStore);
var connectionString = ArgText("--connection-string", "");
var dataDir = Path.Combine(Path.GetTempPath(), "treaty-bench-" + Guid.NewGuid().ToString("N")[..8]);
var participantUrl = $"http://127.0.0.1:{FreePort()}";
var coordinatorUrl = $"http://127.0.0.1:{FreePort()}";

using var counters = new Counters();
await using var participant = BuildParticipant(participantUrl);
await participant.StartAsync();
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

using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = clients * 2 }) { Timeout = TimeSpan.FromSeconds(60) };
var protocolRuns = new Dictionary<string, Func<HttpClient, long, bool, CancellationToken, Task<string?>>>
{
    ["saga"] = (h, i, abort, ct) => SubmitAsync(h, Body("saga", i, abort, "action", "compensate")),
    ["tcc"] = (h, i, abort, ct) => SubmitAsync(h, Body("tcc", i, abort, "try", "confirm", "cancel")),
    ["2pc"] = (h, i, abort, ct) => SubmitAsync(h, Body("2pc", i, abort, "prepare", "commit", "rollback")),
    ["3pc"] = (h, i, abort, ct) => SubmitAsync(h, Body("3pc", i, abort, "canCommit", "preCommit", "doCommit", "abort")),
    ["msg"] = MessageAsync,
};

Console.WriteLine($"Treaty bench: store {store}, {clients} clients, {seconds} s measured after {warmup} s warm-up, {Environment.ProcessorCount} cores, protocols {string.Join(",", protocols)}");
var results = new List<Result>();
var counts = new List<(string Protocol, Counts Commit, Counts Abort)>();
foreach (var protocol in protocols)
{
    var run = protocolRuns[protocol];
    var before = counters.Snapshot(protocol);
    var result = await MeasureAsync($"{protocol} (3 branches, durable)", (i, ct) => Committed(run(http, i, false, ct)));
    var commit = counters.Snapshot(protocol) - before;
    results.Add(result);

    // Aborted transactions: the last branch refuses its first operation (a NO vote, a failed try or
    // action, a sender that rolled back); run a fixed number, sequentially, so counts are exact.
    before = counters.Snapshot(protocol);
    for (var i = 0; i < abortRuns; i++)
    {
        var status = await run(http, -i - 1, true, CancellationToken.None);
        if (status != "aborted")
        {
            Console.WriteLine($"{protocol}: an abort run ended {status ?? "with an error"}");
        }
    }

    await counters.SettleAsync(protocol); // presumed abort's rollbacks are not waited for by the API
    counts.Add((protocol, commit, counters.Snapshot(protocol) - before));
}

var baseline = await MeasureAsync("baseline: client calls 3 participants itself", (i, ct) => BaselineAsync(http, participantUrl, i, ct));
results.Add(baseline);

Console.WriteLine();
Console.WriteLine("| run | tx/s | p50 ms | p99 ms | errors |");
Console.WriteLine("|---|---:|---:|---:|---:|");
foreach (var r in results)
{
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {r.Name} | {r.Rate:0} | {r.P50:0.0} | {r.P99:0.0} | {r.Errors} |"));
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

// Storage: every transaction of the run (warm-up and abort runs included) is still in the file.
// Disposing the coordinator closes the store, which folds the write-ahead log into treaty.db.
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
await participant.StopAsync();
try
{
    Directory.Delete(dataDir, recursive: true);
}
catch (IOException)
{
}

return results.Sum(r => r.Errors) == 0 ? 0 : 1;

async Task<bool> Committed(Task<string?> status) => await status == "committed";

async Task<Result> MeasureAsync(string name, Func<long, CancellationToken, Task<bool>> operation)
{
    var latencies = new List<double>[clients];
    var errors = 0L;
    var measuring = false;
    var counter = 0L;
    using var stop = new CancellationTokenSource();
    var workers = Enumerable.Range(0, clients).Select(w => Task.Run(async () =>
    {
        latencies[w] = new List<double>(100_000);
        while (!stop.IsCancellationRequested)
        {
            var i = Interlocked.Increment(ref counter);
            var started = Stopwatch.GetTimestamp();
            bool ok;
            try
            {
                ok = await operation(i, CancellationToken.None);
            }
            catch (HttpRequestException)
            {
                ok = false;
            }

            if (Volatile.Read(ref measuring))
            {
                if (ok)
                {
                    latencies[w].Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                }
                else
                {
                    Interlocked.Increment(ref errors);
                }
            }
        }
    })).ToArray();

    await Task.Delay(TimeSpan.FromSeconds(warmup));
    Volatile.Write(ref measuring, true);
    var clock = Stopwatch.StartNew();
    using var process = Process.GetCurrentProcess();
    var (user0, total0) = (process.UserProcessorTime, process.TotalProcessorTime);
    await Task.Delay(TimeSpan.FromSeconds(seconds));
    Volatile.Write(ref measuring, false);
    var elapsed = clock.Elapsed.TotalSeconds;
    process.Refresh();
    var (user, total) = (process.UserProcessorTime - user0, process.TotalProcessorTime - total0);
    await stop.CancelAsync();
    await Task.WhenAll(workers);
    var all = latencies.SelectMany(l => l).Order().ToArray();
    var result = new Result(name, all.Length / elapsed, Percentile(all, 0.50), Percentile(all, 0.99), errors);
    // CPU of the whole process (load generator, coordinator and participant together) per operation.
    var cpuPerOp = all.Length == 0 ? double.NaN : total.TotalMilliseconds * 1000 / all.Length;
    var sysShare = total.TotalMilliseconds == 0 ? 0 : 100 * (total - user).TotalMilliseconds / total.TotalMilliseconds;
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"{name}: {result.Rate:0}/s, p50 {result.P50:0.0} ms, p99 {result.P99:0.0} ms, errors {errors}, CPU {cpuPerOp:0} us/op ({sysShare:0}% kernel)"));
    return result;
}

// ops[0] is the protocol's first operation (action, try, prepare, canCommit).
string Body(string protocol, long i, bool abort, params string[] ops)
{
    var branches = new[] { "order", "payment", "inventory" }.Select((name, b) =>
    {
        var fields = new StringBuilder($"\"name\":\"{name}\"");
        foreach (var op in ops)
        {
            // Aborts: the last branch refuses its first operation.
            var path = abort && b == 2 && op == ops[0] ? "no" : "ok";
            fields.Append(CultureInfo.InvariantCulture, $",\"{op}\":\"{participantUrl}/{path}\"");
        }

        return "{" + fields + "}";
    });
    return $$"""{"gid":"bench-{{protocol}}-{{i}}-{{Guid.NewGuid():N}}","protocol":"{{protocol}}","payload":{"amount":1},"branches":[{{string.Join(",", branches)}}]}""";
}

async Task<string?> SubmitAsync(HttpClient client, string body, string query = "?wait=30s")
{
    using var content = new StringContent(body, Encoding.UTF8, "application/json");
    using var response = await client.PostAsync(coordinatorUrl + "/api/v1/transactions" + query, content);
    return StatusOf(await response.Content.ReadAsStringAsync());
}

// A two-phase message: register, (the sender's local commit), submit and wait for delivery. An
// aborted one is a sender that rolled back: queryPrepared answers 409 once its 1 ms timeout passes.
async Task<string?> MessageAsync(HttpClient client, long i, bool abort, CancellationToken ct)
{
    var gid = $"bench-msg-{i}-{Guid.NewGuid():N}";
    var branches = string.Join(",", new[] { "order", "payment", "inventory" }.Select(n => $$"""{"name":"{{n}}","action":"{{participantUrl}}/ok"}"""));
    var query = $"{participantUrl}/{(abort ? "no" : "ok")}";
    var body = $$"""{"gid":"{{gid}}","protocol":"msg","payload":{"amount":1},"queryPrepared":"{{query}}","timeoutMs":{{(abort ? 1 : 60_000)}},"branches":[{{branches}}]}""";
    if (abort)
    {
        return await SubmitAsync(client, body);
    }

    if (await SubmitAsync(client, body, "") != "prepared")
    {
        return null;
    }

    using var submitted = await client.PostAsync($"{coordinatorUrl}/api/v1/transactions/{gid}/submit?wait=30s", null, ct);
    return StatusOf(await submitted.Content.ReadAsStringAsync(ct));
}

static string? StatusOf(string view)
{
    foreach (var status in new[] { "committed", "aborted", "prepared" })
    {
        if (view.Contains($"\"status\":\"{status}\"", StringComparison.Ordinal))
        {
            return status;
        }
    }

    return null;
}

static async Task<bool> BaselineAsync(HttpClient http, string participant, long i, CancellationToken ct)
{
    for (var step = 0; step < 3; step++)
    {
        var envelope = $$$"""{"gid":"base-{{{i}}}","branch":"b{{{step}}}","op":"action","payload":{"amount":1}}""";
        using var content = new StringContent(envelope, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(participant + "/ok", content, ct);
        if (!response.IsSuccessStatusCode)
        {
            return false;
        }
    }

    return true;
}

static WebApplication BuildParticipant(string url)
{
    var builder = WebApplication.CreateSlimBuilder();
    builder.WebHost.UseUrls(url);
    builder.Logging.SetMinimumLevel(LogLevel.Warning);
    var app = builder.Build();
    app.MapPost("/ok", async (HttpRequest request) =>
    {
        // Read the body like a real participant would.
        using var reader = new StreamReader(request.Body);
        await reader.ReadToEndAsync();
        return Results.Text("{\"ok\":true}", "application/json");
    });
    app.MapPost("/no", async (HttpRequest request) =>
    {
        using var reader = new StreamReader(request.Body);
        await reader.ReadToEndAsync();
        return Results.Text("{\"detail\":\"no\"}", "application/json", statusCode: 409);
    });
    return app;
}

static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

static int FreePort()
{
    using var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    var port = ((IPEndPoint)listener.LocalEndpoint).Port;
    listener.Stop();
    return port;
}

int Arg(string name, int fallback) =>
    int.TryParse(ArgText(name, ""), CultureInfo.InvariantCulture, out var value) ? value : fallback;

string ArgText(string name, string fallback)
{
    var index = Array.IndexOf(args, name);
    return index >= 0 && index + 1 < args.Length ? args[index + 1] : fallback;
}

internal sealed record Result(string Name, double Rate, double P50, double P99, long Errors);

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
