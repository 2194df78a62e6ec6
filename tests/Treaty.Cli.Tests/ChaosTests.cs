using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

/// <summary>The chaos test owns the machine while it runs: its timing must not compete with other process tests.</summary>
[CollectionDefinition(nameof(ChaosCollection), DisableParallelization = true)]
public sealed class ChaosCollection;

/// <summary>
/// Real chaos (issue 3, part 6): the real coordinator process under a load of concurrent Shop
/// checkouts, SIGKILLed at random moments and restarted on its data directory; afterwards the
/// real SQLite databases of the coordinator and the three Shop services must agree.
/// <c>TREATY_CHAOS_SEED=&lt;n&gt;</c> replays the random choices (kill moments, pauses, customers, items)
/// of a run; the interleaving with the processes' own timing is not reproducible.
/// </summary>
[Collection(nameof(ChaosCollection))]
public sealed partial class ChaosTests(ITestOutputHelper output)
{
    private const int Clients = 8;
    private static readonly TimeSpan LoadDuration = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan MaxLoadDuration = TimeSpan.FromSeconds(35);
    private static readonly TimeSpan SettlePatience = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan CheckoutPatience = TimeSpan.FromSeconds(45);
    private static readonly string[] OpenStatuses = ["prepared", "pending", "running", "aborting"];
    private static readonly string[] Customers = ["alice", "bob"];
    private static readonly string[] Skus = ["book", "laptop", "pen"];

    private readonly ConcurrentQueue<string> _violations = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    [Fact]
    public async Task Chaos_CoordinatorSigkilledUnderCheckoutLoad_EveryInvariantHoldsOnTheRealDatabases()
    {
        var seed = Environment.GetEnvironmentVariable("TREATY_CHAOS_SEED") is { Length: > 0 } seedText
            ? int.Parse(seedText, NumberStyles.Integer, CultureInfo.InvariantCulture)
            : Random.Shared.Next();
        Log($"seed {seed} (replay the random choices with TREATY_CHAOS_SEED={seed})");
        var random = new Random(seed);

        // A hard bound so that a hang fails the test instead of blocking the run.
        using var hard = new CancellationTokenSource(TimeSpan.FromSeconds(170));
        var ct = hard.Token;
        await using var env = await DemoEnvironment.StartAsync(dataDir: null, ct);
        Log($"processes up: {string.Join(", ", env.Processes.Select(p => $"{p.Name} pid {p.Id}"))}");
        var kills = new List<Kill>();
        var load = new LoadStats();
        try
        {
            // Slow two participants a little so that sagas are in flight whenever the coordinator dies.
            await env.SetFaultAsync(env.PaymentUrl, "/saga/payment/reserve", failTimes: 0, status: 503, delayMs: 60, ct);
            await env.SetFaultAsync(env.InventoryUrl, "/saga/inventory/reserve", failTimes: 0, status: 503, delayMs: 150, ct);

            var killCount = random.Next(3, 6);
            var plan = Enumerable.Range(0, killCount)
                .Select(_ => TimeSpan.FromMilliseconds(random.Next(1500, (int)LoadDuration.TotalMilliseconds - 1500)))
                .Order()
                .Select(at => (At: at, Pause: random.Next(2) == 0 ? TimeSpan.Zero : TimeSpan.FromMilliseconds(random.Next(50, 1001))))
                .ToList();
            Log($"plan: {killCount} kills at {string.Join(", ", plan.Select(p => $"{p.At.TotalSeconds:0.0}s (restart after {p.Pause.TotalMilliseconds:0} ms)"))}");

            using var stopLoad = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var loadClock = Stopwatch.StartNew();
            var clients = Enumerable.Range(0, Clients)
                .Select(i => Task.Run(() => ClientAsync(env, seed, i, new Random(unchecked((seed * 31) + i)), load, stopLoad.Token, ct), ct))
                .ToList();

            try
            {
                foreach (var (at, pause) in plan)
                {
                    var wait = at - loadClock.Elapsed;
                    if (wait > TimeSpan.Zero)
                    {
                        await Task.Delay(wait, TimeProvider.System, ct);
                    }

                    if (kills.Count == plan.Count - 1 && !kills.Any(k => k.InFlight > 0))
                    {
                        // Every kill so far hit an idle moment: make the last one hit running sagas.
                        await WaitForInFlightAsync(env, TimeSpan.FromSeconds(3), ct);
                    }

                    kills.Add(await KillAndRestartAsync(env, loadClock.Elapsed, pause, ct));
                }

                // Keep the load on for the planned time, and for a moment after the last restart.
                var rest = Max(LoadDuration - loadClock.Elapsed, TimeSpan.FromSeconds(1));
                await Task.Delay(Max(Min(rest, MaxLoadDuration - loadClock.Elapsed), TimeSpan.Zero), TimeProvider.System, ct);
            }
            finally
            {
                await stopLoad.CancelAsync();
                // Each client finishes the checkout it is retrying (bounded by CheckoutPatience).
                await Task.WhenAll(clients);
            }

            Log($"load stopped after {loadClock.Elapsed.TotalSeconds:0.0} s: {load.Summary()}");
            await env.ClearFaultsAsync(ct);

            var (transactions, orders) = await SettleAsync(env, ct);
            await CheckAsync(env, transactions, orders, load, ct);
            await Task.WhenAll(kills.Select(k => k.Recovery));
            CheckKills(kills);
        }
        catch (Exception e)
        {
            _violations.Enqueue($"the run failed: {e}");
        }
        finally
        {
            foreach (var kill in kills)
            {
                Log(kill.ToString());
            }
        }

        var violations = _violations.ToList();
        if (violations.Count > 0)
        {
            foreach (var process in env.Processes)
            {
                Log($"--- {process.Name} (pid {process.Id}) output, last lines ---\n{Tail(process.Output, 40)}");
            }
        }

        Log($"done in {_clock.Elapsed.TotalSeconds:0.0} s, {violations.Count} violation(s)");
        violations.ShouldBeEmpty($"seed {seed} (TREATY_CHAOS_SEED={seed}):\n" + string.Join("\n", violations));
    }

    /// <summary>SIGKILLs the coordinator, counting what was in flight, and starts it again on the same data dir and port.</summary>
    private async Task<Kill> KillAndRestartAsync(DemoEnvironment env, TimeSpan at, TimeSpan pause, CancellationToken ct)
    {
        int? inFlight;
        try
        {
            inFlight = await CountOpenAsync(env, ct);
        }
        catch (Exception e) when (e is HttpRequestException or InvalidOperationException or TaskCanceledException && !ct.IsCancellationRequested)
        {
            inFlight = null; // counted below from the restarted coordinator's recovery
        }

        var pid = env.CoordinatorPid;
        env.KillCoordinator();
        if (pause > TimeSpan.Zero)
        {
            await Task.Delay(pause, TimeProvider.System, ct);
        }

        var restart = Stopwatch.StartNew();
        await env.StartCoordinatorAsync(ct);
        var restarted = env.Processes.First(p => p.Name == "coordinator");
        Log($"killed coordinator pid {pid} at {at.TotalSeconds:0.0}s with {inFlight?.ToString(CultureInfo.InvariantCulture) ?? "?"} in flight; " +
            $"pid {restarted.Id} healthy after {pause.TotalMilliseconds:0} ms pause + {restart.Elapsed.TotalSeconds:0.0} s");
        return new Kill(pid ?? 0, at, inFlight, pause, restarted.Id, WatchRecoveryAsync(restarted, ct));
    }

    private static async Task WaitForInFlightAsync(DemoEnvironment env, TimeSpan patience, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < patience && await CountOpenAsync(env, ct) == 0)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(20), TimeProvider.System, ct);
        }
    }

    /// <summary>
    /// The restarted coordinator logs how many unfinished transactions it resumed at startup: exactly
    /// what the kill left in flight in its database. Read early, before the output buffer rolls over.
    /// </summary>
    private static async Task<int?> WatchRecoveryAsync(ChildProcess coordinator, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(10))
        {
            if (RecoveredPattern().Match(coordinator.Output) is { Success: true } match)
            {
                return int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
            }

            if (coordinator.HasExited)
            {
                return null; // killed again before its recovery finished
            }

            await Task.Delay(TimeSpan.FromMilliseconds(20), TimeProvider.System, ct);
        }

        return null;
    }

    private void CheckKills(List<Kill> kills)
    {
        if (kills.Count is < 3 or > 5)
        {
            _violations.Enqueue($"expected 3 to 5 kills, got {kills.Count}");
        }

        // A kill with nothing in flight proves nothing about recovery; at least one must hit running sagas.
        if (!kills.Any(k => k.InFlight > 0 || k.Recovered > 0))
        {
            _violations.Enqueue("no kill happened with a transaction in flight: " + string.Join("; ", kills));
        }
    }

    private async Task ClientAsync(DemoEnvironment env, int seed, int index, Random rng, LoadStats load, CancellationToken stop, CancellationToken ct)
    {
        for (var n = 0; !stop.IsCancellationRequested; n++)
        {
            var key = $"chaos-{seed}-{index}-{n}";
            var body = RandomCheckout(rng);
            string? orderId;
            if (rng.Next(10) == 0)
            {
                // A double click: two requests with one key at once must make one order.
                var both = await Task.WhenAll(CheckoutAsync(env, key, body, load, ct), CheckoutAsync(env, key, body, load, ct));
                orderId = both[0];
                if (both[0] != both[1])
                {
                    _violations.Enqueue($"key {key}: two concurrent requests answered orders {both[0] ?? "none"} and {both[1] ?? "none"}");
                }

                Interlocked.Increment(ref load.ConcurrentDuplicates);
            }
            else
            {
                orderId = await CheckoutAsync(env, key, body, load, ct);
            }

            if (orderId is null)
            {
                continue;
            }

            load.Orders[key] = orderId;
            if (rng.Next(5) == 0)
            {
                // A client that never saw the answer retries later with the same key: the same order, replayed.
                var again = await CheckoutAsync(env, key, body, load, ct, expectReplay: true);
                if (again != orderId)
                {
                    _violations.Enqueue($"key {key}: replay answered order {again ?? "none"}, the first answer was {orderId}");
                }

                Interlocked.Increment(ref load.Replays);
            }

            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(rng.Next(300, 900)), TimeProvider.System, stop);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
        }
    }

    /// <summary>
    /// POST /checkout until it is accepted (202), retrying with the same key after 503, 409 in-flight
    /// (the kit's answer while the same key runs) or a connection error. Returns the order id, or null (a violation) if the order service answered anything else.
    /// </summary>
    private async Task<string?> CheckoutAsync(DemoEnvironment env, string key, JsonObject body, LoadStats load, CancellationToken ct, bool expectReplay = false)
    {
        var patience = Stopwatch.StartNew();
        Interlocked.Increment(ref load.Checkouts);
        for (var attempt = 1; ; attempt++)
        {
            if (patience.Elapsed > CheckoutPatience)
            {
                _violations.Enqueue($"key {key}: no 202 within {CheckoutPatience.TotalSeconds:0} s ({attempt - 1} attempts)");
                return null;
            }

            if (attempt > 1)
            {
                Interlocked.Increment(ref load.Retries);
                await Task.Delay(TimeSpan.FromMilliseconds(Random.Shared.Next(150, 400)), TimeProvider.System, ct);
            }

            using var request = new HttpRequestMessage(HttpMethod.Post, env.OrderUrl + "/checkout") { Content = JsonContent.Create(body) };
            request.Headers.Add("Idempotency-Key", key);
            HttpResponseMessage response;
            try
            {
                response = await env.Http.SendAsync(request, ct);
            }
            catch (Exception e) when (e is HttpRequestException || (e is TaskCanceledException && !ct.IsCancellationRequested))
            {
                Interlocked.Increment(ref load.ConnectionErrors);
                continue;
            }

            using (response)
            {
                var text = await response.Content.ReadAsStringAsync(ct);
                if (response.StatusCode == HttpStatusCode.ServiceUnavailable)
                {
                    Interlocked.Increment(ref load.Unavailable);
                    continue;
                }

                if (response.StatusCode == HttpStatusCode.Conflict && text.Contains("idempotency-key-in-flight", StringComparison.Ordinal))
                {
                    // The same key is still running (a double click): its answer is replayed once stored.
                    Interlocked.Increment(ref load.InFlight);
                    continue;
                }

                if (response.StatusCode != HttpStatusCode.Accepted)
                {
                    _violations.Enqueue($"key {key}: checkout answered {(int)response.StatusCode}: {text}");
                    return null;
                }

                var orderId = JsonNode.Parse(text)?["orderId"]?.GetValue<string>();
                if (orderId is null)
                {
                    _violations.Enqueue($"key {key}: a 202 without an orderId: {text}");
                    return null;
                }

                var replayed = response.Headers.TryGetValues("Idempotent-Replayed", out var values) && values.Contains("true");
                if (expectReplay && !replayed)
                {
                    _violations.Enqueue($"key {key}: a retry after a 202 was not marked Idempotent-Replayed");
                }

                load.Answers.Add((key, orderId));
                Interlocked.Increment(ref load.Accepted);
                return orderId;
            }
        }
    }

    private static JsonObject RandomCheckout(Random rng)
    {
        var customer = rng.Next(4) == 0 ? "bob" : "alice";
        var lines = new Dictionary<string, int>(StringComparer.Ordinal);
        var count = rng.Next(10) < 7 ? 1 : 2;
        while (lines.Count < count)
        {
            var roll = rng.Next(100);
            var (sku, qty) = roll < 60 ? ("book", rng.Next(1, 3)) : roll < 85 ? ("pen", rng.Next(1, 4)) : ("laptop", 1);
            lines.TryAdd(sku, qty);
        }

        return new JsonObject
        {
            ["customerId"] = customer,
            ["items"] = new JsonArray([.. lines.Select(l => (JsonNode)new JsonObject { ["sku"] = l.Key, ["qty"] = l.Value })]),
            ["protocol"] = "saga",
        };
    }

    /// <summary>Waits (bounded) until every transaction has ended and no order is PENDING.</summary>
    private async Task<(Dictionary<string, JsonNode> Transactions, List<JsonNode> Orders)> SettleAsync(DemoEnvironment env, CancellationToken ct)
    {
        var settle = Stopwatch.StartNew();
        while (true)
        {
            var transactions = (await ListTransactionsAsync(env, null, ct)).ToDictionary(t => Str(t, "gid")!, StringComparer.Ordinal);
            var orders = await OrdersAsync(env, ct);
            var open = transactions.Values.Where(t => OpenStatuses.Contains(Str(t, "status"))).ToList();
            var stuck = open.Where(t => t["stuck"]?.GetValue<bool>() == true).ToList();
            var pending = orders.Where(o => Str(o, "status") == "PENDING").ToList();
            var done = open.Count == stuck.Count && (pending.Count == 0 || stuck.Count > 0);
            if (done || settle.Elapsed > SettlePatience)
            {
                Log($"settled after {settle.Elapsed.TotalSeconds:0.0} s: {transactions.Count} transactions, {open.Count} open ({stuck.Count} stuck), {orders.Count} orders, {pending.Count} PENDING");
                if (!done)
                {
                    _violations.Enqueue($"not settled within {SettlePatience.TotalSeconds:0} s: open {string.Join(", ", open.Select(t => $"{Str(t, "gid")} {Str(t, "status")}"))}; " +
                        $"PENDING orders {string.Join(", ", pending.Select(o => Str(o, "orderId")))}");
                }

                return (transactions, orders);
            }

            await Task.Delay(TimeSpan.FromMilliseconds(250), TimeProvider.System, ct);
        }
    }

    private async Task CheckAsync(DemoEnvironment env, Dictionary<string, JsonNode> transactions, List<JsonNode> orders, LoadStats load, CancellationToken ct)
    {
        // The demo's system-wide invariants: money conserved, stock + reserved = initial, reserved = confirmed, nothing held, nothing PENDING.
        foreach (var check in await new DemoScenarios(env, null, null).InvariantsAsync(ct))
        {
            if (!check.Passed)
            {
                _violations.Enqueue($"invariant '{check.What}' broken: {check.Detail}");
            }
        }

        foreach (var tx in transactions.Values)
        {
            if (tx["stuck"]?.GetValue<bool>() == true || Str(tx, "status") is not ("committed" or "aborted"))
            {
                _violations.Enqueue($"transaction {Str(tx, "gid")} ended {Str(tx, "status")} stuck={tx["stuck"]}: {Str(tx, "reason")}");
            }
        }

        // Every order against its saga.
        var orderByGid = orders.ToDictionary(o => Str(o, "gid")!, StringComparer.Ordinal);
        var committed = 0;
        var aborted = 0;
        foreach (var order in orders)
        {
            var (orderId, gid, status) = (Str(order, "orderId"), Str(order, "gid")!, Str(order, "status"));
            var txStatus = transactions.TryGetValue(gid, out var tx) ? Str(tx, "status") : "missing";
            var expected = txStatus switch { "committed" => "CONFIRMED", "aborted" => "CANCELLED", _ => "(no terminal saga)" };
            if (status != expected)
            {
                _violations.Enqueue($"order {orderId} is {status} but its saga {gid} is {txStatus}");
            }

            committed += txStatus == "committed" ? 1 : 0;
            aborted += txStatus == "aborted" ? 1 : 0;
        }

        foreach (var gid in transactions.Keys.Where(g => !orderByGid.ContainsKey(g)))
        {
            _violations.Enqueue($"transaction {gid} has no order");
        }

        await CheckLedgersAsync(env, transactions, orderByGid, ct);
        await CheckReservationsAsync(env, transactions, orderByGid, ct);
        CheckIdempotency(orders, load);
        await CheckAppliedOnceAsync(env, ct);

        Log($"orders: {orders.Count} ({committed} committed, {aborted} aborted)");
        if (committed == 0 || aborted == 0)
        {
            _violations.Enqueue($"the load should both commit and abort sagas: {committed} committed, {aborted} aborted");
        }
    }

    /// <summary>A committed gid: one debit of the order's amount, no refund. An aborted gid: as many refunds as debits, at most one.</summary>
    private async Task CheckLedgersAsync(DemoEnvironment env, Dictionary<string, JsonNode> transactions, Dictionary<string, JsonNode> orderByGid, CancellationToken ct)
    {
        var entries = new List<JsonNode>();
        foreach (var customer in Customers)
        {
            var ledger = await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}/ledger", ct);
            entries.AddRange(ledger["entries"]!.AsArray().Select(e => e!));
        }

        var byGid = entries.GroupBy(e => Str(e, "gid")!, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        foreach (var (gid, tx) in transactions)
        {
            var list = byGid.GetValueOrDefault(gid) ?? [];
            var debits = list.Where(e => Str(e, "kind") == "debit").ToList();
            var refunds = list.Where(e => Str(e, "kind") == "refund").ToList();
            var actual = $"{debits.Count} debit(s), {refunds.Count} refund(s)";
            switch (Str(tx, "status"))
            {
                case "committed":
                    var amount = orderByGid.TryGetValue(gid, out var order) ? Dec(order, "amount") : -1m;
                    if (debits.Count != 1 || refunds.Count != 0 || Dec(debits[0], "amount") != amount)
                    {
                        _violations.Enqueue($"ledger of committed {gid}: expected one debit of {amount} and no refund, got {actual} " +
                            string.Join(", ", list.Select(e => $"{Str(e, "kind")} {e["amount"]}")));
                    }

                    break;
                case "aborted":
                    if (debits.Count > 1 || refunds.Count != debits.Count)
                    {
                        _violations.Enqueue($"ledger of aborted {gid}: expected debits == refunds <= 1, got {actual}");
                    }

                    break;
            }
        }

        foreach (var gid in byGid.Keys.Where(g => !transactions.ContainsKey(g)))
        {
            _violations.Enqueue($"ledger entries for {gid}, which the coordinator does not know");
        }
    }

    /// <summary>A committed gid holds exactly its order's quantities; an aborted gid holds nothing.</summary>
    private async Task CheckReservationsAsync(DemoEnvironment env, Dictionary<string, JsonNode> transactions, Dictionary<string, JsonNode> orderByGid, CancellationToken ct)
    {
        var reservations = new List<JsonNode>();
        foreach (var sku in Skus)
        {
            var list = await env.GetJsonAsync($"{env.InventoryUrl}/stock/{sku}/holds", ct);
            reservations.AddRange(list["holds"]!.AsArray().Select(r => r!));
        }

        var byGid = reservations.GroupBy(r => Str(r, "gid")!, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.ToList(), StringComparer.Ordinal);
        foreach (var (gid, tx) in transactions)
        {
            var held = (byGid.GetValueOrDefault(gid) ?? []).Where(r => Str(r, "state") != "released")
                .GroupBy(r => Str(r, "sku")!, StringComparer.Ordinal)
                .ToDictionary(g => g.Key, g => g.Sum(r => r["qty"]!.GetValue<int>()), StringComparer.Ordinal);
            var heldText = Describe(held);
            switch (Str(tx, "status"))
            {
                case "committed":
                    var ordered = orderByGid.TryGetValue(gid, out var order)
                        ? order["items"]!.AsArray().GroupBy(i => Str(i, "sku")!, StringComparer.Ordinal)
                            .ToDictionary(g => g.Key, g => g.Sum(i => i!["qty"]!.GetValue<int>()), StringComparer.Ordinal)
                        : [];
                    if (heldText != Describe(ordered))
                    {
                        _violations.Enqueue($"stock of committed {gid}: holds {heldText}, the order has {Describe(ordered)}");
                    }

                    break;
                case "aborted":
                    if (held.Count > 0)
                    {
                        _violations.Enqueue($"stock of aborted {gid}: still holds {heldText}");
                    }

                    break;
            }
        }

        foreach (var gid in byGid.Keys.Where(g => !transactions.ContainsKey(g)))
        {
            _violations.Enqueue($"reservations for {gid}, which the coordinator does not know");
        }
    }

    /// <summary>
    /// Each participant counts the calls that changed data: every debit, refund, reservation and
    /// release in the databases was applied by exactly one call, however often the coordinator resent it.
    /// </summary>
    private async Task CheckAppliedOnceAsync(DemoEnvironment env, CancellationToken ct)
    {
        var entries = new List<JsonNode>();
        foreach (var customer in Customers)
        {
            entries.AddRange((await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}/ledger", ct))["entries"]!.AsArray().Select(e => e!));
        }

        var reservations = new List<JsonNode>();
        foreach (var sku in Skus)
        {
            reservations.AddRange((await env.GetJsonAsync($"{env.InventoryUrl}/stock/{sku}/holds", ct))["holds"]!.AsArray().Select(r => r!));
        }

        var expected = new (string Url, string Path, int Rows)[]
        {
            (env.PaymentUrl, "/saga/payment/reserve", entries.Count(e => Str(e, "kind") == "debit")),
            (env.PaymentUrl, "/saga/payment/refund", entries.Count(e => Str(e, "kind") == "refund")),
            (env.InventoryUrl, "/saga/inventory/reserve", reservations.Select(r => Str(r, "gid")).Distinct(StringComparer.Ordinal).Count()),
            (env.InventoryUrl, "/saga/inventory/release", reservations.Where(r => Str(r, "state") == "released").Select(r => Str(r, "gid")).Distinct(StringComparer.Ordinal).Count()),
        };
        var counts = new List<string>();
        foreach (var (url, path, rows) in expected)
        {
            var count = await env.GetJsonAsync($"{url}/_faults/calls?path={Uri.EscapeDataString(path)}", ct);
            var (calls, applied) = (count["calls"]!.GetValue<long>(), count["applied"]!.GetValue<long>());
            counts.Add($"{path} {calls} calls, {applied} applied");
            if (applied != rows)
            {
                _violations.Enqueue($"{path}: {applied} calls applied an effect, the database holds {rows}");
            }
        }

        Log("participants: " + string.Join("; ", counts));
    }

    /// <summary>One order per Idempotency-Key: every answer for a key names one order, and no order exists without a key.</summary>
    private void CheckIdempotency(List<JsonNode> orders, LoadStats load)
    {
        foreach (var group in load.Answers.GroupBy(a => a.Key, StringComparer.Ordinal))
        {
            var ids = group.Select(a => a.OrderId).Distinct(StringComparer.Ordinal).ToList();
            if (ids.Count != 1)
            {
                _violations.Enqueue($"key {group.Key} answered {ids.Count} different orders: {string.Join(", ", ids)}");
            }
        }

        var keyed = load.Orders.Values.ToHashSet(StringComparer.Ordinal);
        if (keyed.Count != load.Orders.Count)
        {
            _violations.Enqueue($"{load.Orders.Count} keys share {keyed.Count} orders");
        }

        var stored = orders.Select(o => Str(o, "orderId")!).ToHashSet(StringComparer.Ordinal);
        if (!stored.SetEquals(keyed))
        {
            _violations.Enqueue($"orders without a key: {string.Join(", ", stored.Except(keyed))}; keys without an order: {string.Join(", ", keyed.Except(stored))}");
        }
    }

    private static async Task<int> CountOpenAsync(DemoEnvironment env, CancellationToken ct)
    {
        var count = 0;
        foreach (var status in OpenStatuses)
        {
            count += (await ListTransactionsAsync(env, status, ct)).Count;
        }

        return count;
    }

    private static async Task<List<JsonNode>> ListTransactionsAsync(DemoEnvironment env, string? status, CancellationToken ct)
    {
        var items = new List<JsonNode>();
        string? cursor = null;
        do
        {
            var url = $"{env.CoordinatorUrl}/api/v1/transactions?limit=500"
                + (status is null ? "" : "&status=" + status)
                + (cursor is null ? "" : "&cursor=" + Uri.EscapeDataString(cursor));
            var page = await env.GetJsonAsync(url, ct);
            items.AddRange(page["items"]!.AsArray().Select(i => i!));
            cursor = Str(page, "nextCursor");
        }
        while (cursor is not null);
        return items;
    }

    private static async Task<List<JsonNode>> OrdersAsync(DemoEnvironment env, CancellationToken ct) =>
        [.. (await env.GetJsonAsync(env.OrderUrl + "/orders", ct))["orders"]!.AsArray().Select(o => o!)];

    private static string Describe(Dictionary<string, int> quantities) =>
        quantities.Count == 0 ? "nothing" : string.Join(" ", quantities.OrderBy(q => q.Key, StringComparer.Ordinal).Select(q => $"{q.Key}x{q.Value}"));

    private static string? Str(JsonNode? node, string property) => node?[property]?.GetValue<string>();

    private static decimal Dec(JsonNode? node, string property)
    {
        var value = node?[property] ?? throw new InvalidOperationException($"missing '{property}' in {node?.ToJsonString()}");
        return value.GetValueKind() == JsonValueKind.String
            ? decimal.Parse(value.GetValue<string>(), CultureInfo.InvariantCulture)
            : value.GetValue<decimal>();
    }

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    private static TimeSpan Min(TimeSpan a, TimeSpan b) => a < b ? a : b;

    private static string Tail(string text, int lines)
    {
        var all = text.Split('\n');
        return string.Join('\n', all.Skip(Math.Max(0, all.Length - lines)));
    }

    private void Log(string message)
    {
        var line = $"[chaos {_clock.Elapsed.TotalSeconds,5:0.0}s] {message}";
        output.WriteLine(line);
        Console.WriteLine(line);
    }

    [GeneratedRegex(@"resumed (\d+) unfinished transactions")]
    private static partial Regex RecoveredPattern();

    /// <summary>One SIGKILL: when, what was in flight by the API just before, what the restarted coordinator resumed.</summary>
    private sealed record Kill(int Pid, TimeSpan At, int? InFlight, TimeSpan Pause, int RestartedPid, Task<int?> Recovery)
    {
        /// <summary>The restarted coordinator's startup recovery count: the non-terminal transactions the kill left.</summary>
        public int? Recovered => Recovery.IsCompletedSuccessfully ? Recovery.Result : null;

        public override string ToString() =>
            $"kill pid {Pid} at {At.TotalSeconds:0.0}s of load: {InFlight?.ToString(CultureInfo.InvariantCulture) ?? "?"} in flight by the API, " +
            $"{Recovered?.ToString(CultureInfo.InvariantCulture) ?? "?"} resumed by pid {RestartedPid}, restart pause {Pause.TotalMilliseconds:0} ms";
    }

    private sealed class LoadStats
    {
        public int Checkouts;
        public int Accepted;
        public int Retries;
        public int Unavailable;
        public int ConnectionErrors;
        public int InFlight;
        public int Replays;
        public int ConcurrentDuplicates;

        /// <summary>Every 202: (key, order id).</summary>
        public ConcurrentBag<(string Key, string OrderId)> Answers { get; } = [];

        /// <summary>The order each key made.</summary>
        public ConcurrentDictionary<string, string> Orders { get; } = new(StringComparer.Ordinal);

        public string Summary() =>
            $"{Orders.Count} checkouts accepted ({Checkouts} checkout calls incl. {Replays} replays and {ConcurrentDuplicates} double clicks), " +
            $"{Retries} retries after {Unavailable} × 503, {InFlight} × 409 in flight and {ConnectionErrors} connection errors";
    }
}
