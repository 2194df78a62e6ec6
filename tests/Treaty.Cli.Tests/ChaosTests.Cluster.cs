using System.Diagnostics;
using System.Globalization;
using Treaty.Cli.Tests.Support;
using Treaty.Testing;

namespace Treaty.Cli.Tests;

/// <summary>
/// Several coordinators on one PostgreSQL (issue 11): three real <c>treaty serve</c> processes share
/// a real database behind a round-robin balancer, the Shop checks out through it, and the test kills
/// coordinators (SIGKILL, by pid) or PostgreSQL itself under the load. Afterwards the same checks as
/// the single-coordinator chaos run: every transaction ended, every order agrees with it, money and
/// stock conserved, every effect applied once.
/// </summary>
public sealed partial class ChaosTests
{
    /// <summary>Short, so that the survivors take a dead instance's transactions over within the run.</summary>
    private static readonly TimeSpan ClusterLease = TimeSpan.FromSeconds(2);

    [Fact]
    public async Task Chaos_ThreeCoordinatorsOnOnePostgreSql_OneThenASecondSigkilled_EveryTransactionFinishes()
    {
        await RunClusterAsync("saga", async (cluster, env, clock, ct) =>
        {
            // One instance dies with transactions in flight, later a second: the last one standing
            // takes over what they held once their leases expire.
            foreach (var (victim, at) in new[] { (0, TimeSpan.FromSeconds(5)), (1, TimeSpan.FromSeconds(11)) })
            {
                await DelayUntilAsync(clock, at, ct);
                var open = await OpenGidsWhenSomeAsync(env, TimeSpan.FromSeconds(3), ct);
                var pid = cluster.Kill(victim);
                Log($"SIGKILLed {cluster.Name(victim)} (pid {pid}) at {clock.Elapsed.TotalSeconds:0.0}s with {open.Count} transactions open");
                cluster.OpenAtDisruption.UnionWith(open);
            }
        });
    }

    [Fact]
    public async Task Chaos_PostgreSqlRestartedUnderLoad_CoordinatorsReconnectAndNothingIsLost()
    {
        await RunClusterAsync("tcc", async (cluster, env, clock, ct) =>
        {
            await DelayUntilAsync(clock, TimeSpan.FromSeconds(7), ct);
            // Several open: a transaction whose owner only waited out the outage (a call, a retry's
            // backoff) and renewed its lease in time is not resumed, and with two open both once were.
            cluster.OpenAtDisruption.UnionWith(await OpenGidsWhenSomeAsync(env, TimeSpan.FromSeconds(3), ct, atLeast: 4));
            var down = TimeSpan.FromMilliseconds(1500);
            Log($"restarting PostgreSQL (immediate stop, {down.TotalMilliseconds:0} ms down) at {clock.Elapsed.TotalSeconds:0.0}s " +
                $"with {cluster.OpenAtDisruption.Count} transactions open");
            await cluster.Postgres.RestartAsync(down);
            Log($"PostgreSQL is back at {clock.Elapsed.TotalSeconds:0.0}s");
        });
    }

    private async Task RunClusterAsync(string protocol, Func<CoordinatorCluster, DemoEnvironment, Stopwatch, CancellationToken, Task> disrupt)
    {
        var chaos = ProtocolCase.Of(protocol);
        var seed = Random.Shared.Next();
        using var hard = new CancellationTokenSource(TimeSpan.FromSeconds(200));
        var ct = hard.Token;
        await using var cluster = await CoordinatorCluster.StartPostgresAsync(3);
        await using var proxy = await RoundRobinProxy.StartAsync(cluster.Urls);
        await using var env = await DemoEnvironment.StartAsync(dataDir: null, ct, chaos.InDoubtAfter, coordinatorUrl: proxy.Url);
        var load = new LoadStats();
        try
        {
            await cluster.StartAsync(env, ClusterLease, ct);
            Log($"{protocol}: {string.Join(", ", cluster.Processes.Select(p => $"{p.Name} pid {p.Id}"))} on PostgreSQL port {cluster.Postgres.Port}, behind {proxy.Url}");
            await env.SetFaultAsync(env.PaymentUrl, chaos.Path("payment", chaos.FirstOp), failTimes: 0, status: 503, delayMs: 60, ct);
            await env.SetFaultAsync(env.InventoryUrl, chaos.Path("inventory", chaos.FirstOp), failTimes: 0, status: 503, delayMs: 150, ct);

            using var stopLoad = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var clock = Stopwatch.StartNew();
            var clients = Enumerable.Range(0, Clients)
                .Select(i => Task.Run(() => ClientAsync(env, chaos, seed, i, new Random(unchecked((seed * 31) + i)), load, stopLoad.Token, ct), ct))
                .ToList();
            try
            {
                await disrupt(cluster, env, clock, ct);
                await DelayUntilAsync(clock, TimeSpan.FromSeconds(18), ct);
            }
            finally
            {
                await stopLoad.CancelAsync();
                await Task.WhenAll(clients);
            }

            Log($"load stopped after {clock.Elapsed.TotalSeconds:0.0} s: {load.Summary()}; balancer: " +
                string.Join(", ", proxy.Served.Select(s => $"{s.Key} {s.Value}")));
            await env.ClearFaultsAsync(ct);
            var (transactions, orders) = await SettleAsync(env, ct);
            await CheckAsync(env, chaos, transactions, orders, load, ct);
            await CheckTakenOverAsync(env, cluster, ct);
        }
        catch (Exception e)
        {
            _violations.Enqueue($"the run failed: {e}");
        }

        var violations = _violations.ToList();
        if (violations.Count > 0)
        {
            foreach (var process in cluster.Processes.Concat(env.Processes))
            {
                Log($"--- {process.Name} (pid {process.Id}) output, last lines ---\n{Tail(process.Output, 40)}");
            }
        }

        Log($"done in {_clock.Elapsed.TotalSeconds:0.0} s, {violations.Count} violation(s)");
        violations.ShouldBeEmpty($"{protocol}:\n" + string.Join("\n", violations));
    }

    /// <summary>A disruption that hit nothing in flight proves nothing: at least one transaction open
    /// at that moment must have been resumed from the store (by a survivor, or after the database came back).</summary>
    private async Task CheckTakenOverAsync(DemoEnvironment env, CoordinatorCluster cluster, CancellationToken ct)
    {
        var resumed = 0;
        foreach (var gid in cluster.OpenAtDisruption)
        {
            var events = await env.GetJsonAsync($"{env.CoordinatorUrl}/api/v1/transactions/{Uri.EscapeDataString(gid)}/events", ct);
            resumed += events.ToJsonString().Contains("\"resumed\"", StringComparison.Ordinal) ? 1 : 0;
        }

        Log($"{cluster.OpenAtDisruption.Count} transactions were open at the disruptions; {resumed} of them were resumed from the store");
        if (resumed == 0)
        {
            _violations.Enqueue($"none of the {cluster.OpenAtDisruption.Count} transactions open at a disruption was resumed from the store");
        }
    }

    /// <summary>
    /// The open gids, as soon as the list has <paramref name="atLeast"/> (or, after
    /// <paramref name="patience"/>, whatever it has). The list is the sample: counting first and
    /// listing afterwards could list none, every transaction counted having finished in between.
    /// </summary>
    private static async Task<HashSet<string>> OpenGidsWhenSomeAsync(DemoEnvironment env, TimeSpan patience, CancellationToken ct, int atLeast = 1)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var open = await OpenGidsAsync(env, ct);
            if (open.Count >= atLeast || watch.Elapsed >= patience)
            {
                return open;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(20), TimeProvider.System, ct);
        }
    }

    private static async Task<HashSet<string>> OpenGidsAsync(DemoEnvironment env, CancellationToken ct)
    {
        var open = new HashSet<string>(StringComparer.Ordinal);
        foreach (var status in OpenStatuses)
        {
            open.UnionWith((await ListTransactionsAsync(env, status, ct)).Select(t => Str(t, "gid")!));
        }

        return open;
    }

    private static async Task DelayUntilAsync(Stopwatch clock, TimeSpan at, CancellationToken ct)
    {
        var wait = at - clock.Elapsed;
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait, TimeProvider.System, ct);
        }
    }

    /// <summary>N <c>treaty serve</c> processes on one throw-away PostgreSQL database.</summary>
    private sealed class CoordinatorCluster : IAsyncDisposable
    {
        private readonly List<ChildProcess?> _processes;
        private readonly string _root = Path.Combine(Path.GetTempPath(), "treaty-cluster-" + Guid.NewGuid().ToString("N")[..8]);

        private CoordinatorCluster(PostgresServer postgres, string connectionString, int count)
        {
            Postgres = postgres;
            ConnectionString = connectionString;
            Urls = [.. Enumerable.Range(0, count).Select(_ => $"http://127.0.0.1:{ChildProcess.FreePort()}")];
            _processes = [.. Enumerable.Repeat<ChildProcess?>(null, count)];
        }

        public PostgresServer Postgres { get; }

        public string ConnectionString { get; }

        public IReadOnlyList<string> Urls { get; }

        /// <summary>Gids that were open when a coordinator or the database was killed.</summary>
        public HashSet<string> OpenAtDisruption { get; } = new(StringComparer.Ordinal);

        public IEnumerable<ChildProcess> Processes => _processes.OfType<ChildProcess>();

        public string Name(int index) => "coordinator-" + index.ToString(CultureInfo.InvariantCulture);

        public static async Task<CoordinatorCluster> StartPostgresAsync(int count)
        {
            var postgres = await PostgresServer.StartAsync();
            try
            {
                return new CoordinatorCluster(postgres, await postgres.CreateDatabaseAsync("cluster"), count);
            }
            catch
            {
                await postgres.DisposeAsync();
                throw;
            }
        }

        /// <summary>Starts every instance with the environment's callback secret; waits until each is healthy.</summary>
        public async Task StartAsync(DemoEnvironment env, TimeSpan lease, CancellationToken ct)
        {
            for (var i = 0; i < Urls.Count; i++)
            {
                _processes[i] = ChildProcess.StartDotnet(Name(i), typeof(ChildProcess).Assembly.Location,
                    ["serve", "--urls", Urls[i], "--data-dir", Path.Combine(_root, Name(i)),
                     "--store", "postgres", "--connection-string", ConnectionString,
                     "--instance-id", Name(i), "--lease", lease.TotalSeconds.ToString(CultureInfo.InvariantCulture) + "s"],
                    new Dictionary<string, string> { [DemoEnvironment.CallbackSecretVariable] = env.CallbackSecret });
            }

            for (var i = 0; i < Urls.Count; i++)
            {
                await _processes[i]!.WaitHealthyAsync(env.Http, Urls[i] + "/healthz", TimeSpan.FromSeconds(60), ct);
            }
        }

        /// <summary>SIGKILLs instance <paramref name="index"/> by its pid; returns the pid.</summary>
        public int Kill(int index)
        {
            var process = _processes[index] ?? throw new InvalidOperationException($"{Name(index)} is not running.");
            var pid = process.Id;
            process.Kill();
            return pid;
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var process in _processes)
            {
                process?.Dispose(); // SIGKILL by pid if it still runs
            }

            await Postgres.DisposeAsync();
            try
            {
                Directory.Delete(_root, recursive: true);
            }
            catch (IOException)
            {
                // best effort (or never created)
            }
        }
    }
}
