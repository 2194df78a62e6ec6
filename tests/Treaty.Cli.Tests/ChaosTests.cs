using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.Data.Sqlite;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

/// <summary>The chaos test owns the machine while it runs: its timing must not compete with other process tests.</summary>
[CollectionDefinition(nameof(ChaosCollection), DisableParallelization = true)]
public sealed class ChaosCollection;

/// <summary>
/// Real chaos (issue 3, part 6): the real coordinator process under a load of concurrent Shop
/// checkouts, SIGKILLed at random moments and restarted on its data directory; afterwards the
/// real SQLite databases of the coordinator and the three Shop services must agree. One run per
/// protocol (saga, TCC, 2PC, 3PC): the checkouts ask for it, and its first op is slowed so that
/// transactions are in flight when the coordinator dies.
/// <c>TREATY_CHAOS_SEED=&lt;n&gt;</c> replays the random choices (kill moments, pauses, customers, items)
/// of a run; the interleaving with the processes' own timing is not reproducible.
/// </summary>
[Collection(nameof(ChaosCollection))]
public sealed partial class ChaosTests(ITestOutputHelper output)
{
    private const int Clients = 8;
    private static readonly TimeSpan LoadDuration = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan MaxLoadDuration = TimeSpan.FromSeconds(35);

    /// <summary>
    /// Covers the longest a service waits on its own before it acts: the order outbox reconciles a
    /// PENDING order, and the in-doubt resolver asks about a branch, after <c>--in-doubt-after</c>
    /// (at most 30 s: the services' default for saga and TCC, <see cref="ProtocolCase.InDoubtAfter"/>
    /// for 2PC and 3PC), plus a poll (at most 5 s).
    /// </summary>
    private static readonly TimeSpan SettlePatience = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan CheckoutPatience = TimeSpan.FromSeconds(45);
    private static readonly string[] OpenStatuses = ["prepared", "pending", "running", "aborting"];
    private static readonly string[] Customers = ["alice", "bob"];
    private static readonly string[] Skus = ["book", "laptop", "pen"];

    private readonly ConcurrentQueue<string> _violations = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    [Theory]
    [InlineData("saga")]
    [InlineData("tcc")]
    [InlineData("2pc")]
    [InlineData("3pc")]
    public async Task Chaos_CoordinatorSigkilledUnderCheckoutLoad_EveryInvariantHoldsOnTheRealDatabases(string protocol)
    {
        var chaos = ProtocolCase.Of(protocol);
        var seed = Environment.GetEnvironmentVariable("TREATY_CHAOS_SEED") is { Length: > 0 } seedText
            ? int.Parse(seedText, NumberStyles.Integer, CultureInfo.InvariantCulture)
            : Random.Shared.Next();
        Log($"protocol {protocol}, seed {seed} (replay the random choices with TREATY_CHAOS_SEED={seed}), " +
            $"--in-doubt-after {chaos.InDoubtAfter?.TotalSeconds.ToString(CultureInfo.InvariantCulture) ?? "default"}");
        var random = new Random(seed);

        // A hard bound so that a hang fails the test instead of blocking the run.
        using var hard = new CancellationTokenSource(TimeSpan.FromSeconds(170));
        var ct = hard.Token;
        await using var env = await DemoEnvironment.StartAsync(dataDir: null, ct, chaos.InDoubtAfter);
        Log($"processes up: {string.Join(", ", env.Processes.Select(p => $"{p.Name} pid {p.Id}"))}");
        var kills = new List<Kill>();
        var load = new LoadStats();
        try
        {
            // Slow the protocol's first op on two participants a little, so that transactions are
            // in flight (voting, trying, reserving) whenever the coordinator dies.
            await env.SetFaultAsync(env.PaymentUrl, chaos.Path("payment", chaos.FirstOp), failTimes: 0, status: 503, delayMs: 60, ct);
            await env.SetFaultAsync(env.InventoryUrl, chaos.Path("inventory", chaos.FirstOp), failTimes: 0, status: 503, delayMs: 150, ct);

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
                .Select(i => Task.Run(() => ClientAsync(env, chaos, seed, i, new Random(unchecked((seed * 31) + i)), load, stopLoad.Token, ct), ct))
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
                        // Every kill so far hit an idle moment: make the last one hit running transactions.
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
            await CheckAsync(env, chaos, transactions, orders, load, ct);
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
        violations.ShouldBeEmpty($"{protocol}, seed {seed} (TREATY_CHAOS_SEED={seed}):\n" + string.Join("\n", violations));
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

        // A kill with nothing in flight proves nothing about recovery; at least one must hit running transactions.
        if (!kills.Any(k => k.InFlight > 0 || k.Recovered > 0))
        {
            _violations.Enqueue("no kill happened with a transaction in flight: " + string.Join("; ", kills));
        }
    }

    private async Task ClientAsync(DemoEnvironment env, ProtocolCase chaos, int seed, int index, Random rng, LoadStats load, CancellationToken stop, CancellationToken ct)
    {
        for (var n = 0; !stop.IsCancellationRequested; n++)
        {
            var key = $"chaos-{seed}-{index}-{n}";
            var body = RandomCheckout(rng, chaos.Name);
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

    private static JsonObject RandomCheckout(Random rng, string protocol)
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
            ["protocol"] = protocol,
        };
    }

    /// <summary>
    /// Waits (bounded) until every transaction has ended, no order is PENDING and no wallet or
    /// stock row holds anything or is locked. The last one matters under 2PC: presumed abort's
    /// rollbacks that a kill cut are not resent (the coordinator recorded the abort and moved on),
    /// so the participants' in-doubt resolvers release what they hold after <c>--in-doubt-after</c>.
    /// </summary>
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
            var leftovers = await LeftoversAsync(env, ct);
            // Something stuck will never settle by itself: stop waiting, the checks report it.
            var done = open.Count == stuck.Count && (stuck.Count > 0 || (pending.Count == 0 && leftovers.Count == 0));
            if (done || settle.Elapsed > SettlePatience)
            {
                Log($"settled after {settle.Elapsed.TotalSeconds:0.0} s: {transactions.Count} transactions, {open.Count} open ({stuck.Count} stuck), " +
                    $"{orders.Count} orders, {pending.Count} PENDING, {leftovers.Count} rows held or locked");
                if (!done)
                {
                    string[] left =
                    [
                        .. open.Select(t => $"{Str(t, "gid")} {Str(t, "status")}"),
                        .. pending.Select(o => $"order {Str(o, "orderId")} PENDING"),
                        .. leftovers,
                    ];
                    _violations.Enqueue($"not settled within {SettlePatience.TotalSeconds:0} s: {string.Join(", ", left)}");
                }

                return (transactions, orders);
            }

            await Task.Delay(TimeSpan.FromMilliseconds(250), TimeProvider.System, ct);
        }
    }

    /// <summary>Every wallet or stock row that still holds something or is locked by a transaction (2PC/3PC's row locks).</summary>
    private static async Task<List<string>> LeftoversAsync(DemoEnvironment env, CancellationToken ct)
    {
        var leftovers = new List<string>();
        foreach (var wallet in (await env.GetJsonAsync(env.PaymentUrl + "/wallets", ct))["wallets"]!.AsArray())
        {
            Add(leftovers, $"wallet {Str(wallet, "customerId")}", Dec(wallet, "held") != 0 ? wallet!["held"]!.ToJsonString() : null, Str(wallet, "lockedBy"));
        }

        foreach (var stock in (await env.GetJsonAsync(env.InventoryUrl + "/stock", ct))["items"]!.AsArray())
        {
            var held = stock!["held"]!.GetValue<int>();
            Add(leftovers, $"stock {Str(stock, "sku")}", held != 0 ? held.ToString(CultureInfo.InvariantCulture) : null, Str(stock, "lockedBy"));
        }

        return leftovers;

        static void Add(List<string> leftovers, string row, string? held, string? lockedBy)
        {
            if (held is not null || lockedBy is not null)
            {
                leftovers.Add($"{row}{(held is null ? "" : " holds " + held)}{(lockedBy is null ? "" : " locked by " + lockedBy)}");
            }
        }
    }

    private async Task CheckAsync(DemoEnvironment env, ProtocolCase chaos, Dictionary<string, JsonNode> transactions, List<JsonNode> orders, LoadStats load, CancellationToken ct)
    {
        // The demo's system-wide invariants: money and stock conserved, nothing held, every transaction ended, nothing PENDING.
        foreach (var check in await new DemoScenarios(env, null, null).InvariantsAsync(ct))
        {
            if (!check.Passed)
            {
                _violations.Enqueue($"invariant '{check.What}' broken: {check.Detail}");
            }
        }

        if (await LeftoversAsync(env, ct) is { Count: > 0 } leftovers)
        {
            _violations.Enqueue("rows still held or locked: " + string.Join(", ", leftovers));
        }

        foreach (var tx in transactions.Values)
        {
            if (tx["stuck"]?.GetValue<bool>() == true || Str(tx, "status") is not ("committed" or "aborted"))
            {
                _violations.Enqueue($"transaction {Str(tx, "gid")} ended {Str(tx, "status")} stuck={tx["stuck"]}: {Str(tx, "reason")}");
            }
        }

        // Every order against its transaction.
        var orderByGid = orders.ToDictionary(o => Str(o, "gid")!, StringComparer.Ordinal);
        var committed = 0;
        var aborted = 0;
        foreach (var order in orders)
        {
            var (orderId, gid, status) = (Str(order, "orderId"), Str(order, "gid")!, Str(order, "status"));
            var txStatus = transactions.TryGetValue(gid, out var tx) ? Str(tx, "status") : "missing";
            var expected = txStatus switch { "committed" => "CONFIRMED", "aborted" => "CANCELLED", _ => "(no terminal transaction)" };
            if (status != expected)
            {
                _violations.Enqueue($"order {orderId} is {status} but its transaction {gid} is {txStatus}");
            }

            if (Str(order, "protocol") != chaos.Name)
            {
                _violations.Enqueue($"order {orderId} ran under {Str(order, "protocol")}, the checkout asked for {chaos.Name}");
            }

            committed += txStatus == "committed" ? 1 : 0;
            aborted += txStatus == "aborted" ? 1 : 0;
        }

        foreach (var gid in transactions.Keys.Where(g => !orderByGid.ContainsKey(g)))
        {
            _violations.Enqueue($"transaction {gid} has no order");
        }

        var effects = await Effects.ReadAsync(env, orders, ct);
        CheckEffectsPerTransaction(chaos, transactions, orderByGid, effects);
        CheckIdempotency(orders, load);
        await CheckAppliedOnceAsync(env, chaos, effects, ct);

        Log($"orders: {orders.Count} ({committed} committed, {aborted} aborted)");
        if (committed == 0 || aborted == 0)
        {
            _violations.Enqueue($"the load should both commit and abort transactions: {committed} committed, {aborted} aborted");
        }
    }

    /// <summary>
    /// Each transaction's effects in the three databases, against its outcome. Money: a committed
    /// gid has one debit of its order's amount and no refund; an aborted saga as many refunds as
    /// debits, at most one; an aborted TCC/2PC/3PC neither (its money was only held). Payment
    /// holds (TCC/2PC/3PC only): a committed gid one, captured, of the order's amount; an aborted
    /// gid none or released. Stock: a committed gid sold exactly its order's quantities and holds
    /// nothing; an aborted gid holds and sold nothing.
    /// </summary>
    private void CheckEffectsPerTransaction(ProtocolCase chaos, Dictionary<string, JsonNode> transactions, Dictionary<string, JsonNode> orderByGid, Effects effects)
    {
        var ledgerByGid = effects.Ledger.ToLookup(e => Str(e, "gid")!, StringComparer.Ordinal);
        var paymentHoldsByGid = effects.PaymentHolds.ToLookup(h => h.Gid, StringComparer.Ordinal);
        var stockHoldsByGid = effects.StockHolds.ToLookup(h => Str(h, "gid")!, StringComparer.Ordinal);
        foreach (var (gid, tx) in transactions)
        {
            var order = orderByGid.GetValueOrDefault(gid);
            var amount = order is null ? -1m : Dec(order, "amount");
            var entries = ledgerByGid[gid].ToList();
            var debits = entries.Where(e => Str(e, "kind") == "debit").ToList();
            var refunds = entries.Count(e => Str(e, "kind") == "refund");
            var ledger = entries.Count == 0 ? "nothing" : string.Join(", ", entries.Select(e => $"{Str(e, "kind")} {e["amount"]}"));
            var paymentHolds = paymentHoldsByGid[gid].ToList();
            var holds = paymentHolds.Count == 0 ? "none" : string.Join(", ", paymentHolds.Select(h => $"{h.State} {h.Amount}"));
            var stock = stockHoldsByGid[gid].GroupBy(h => Str(h, "state")!, StringComparer.Ordinal).ToDictionary(g => g.Key, Quantities, StringComparer.Ordinal);
            var stockText = stock.Count == 0 ? "nothing" : string.Join("; ", stock.OrderBy(s => s.Key, StringComparer.Ordinal).Select(s => $"{s.Key} {Describe(s.Value)}"));
            switch (Str(tx, "status"))
            {
                case "committed":
                    if (debits.Count != 1 || refunds != 0 || Dec(debits[0], "amount") != amount)
                    {
                        _violations.Enqueue($"ledger of committed {gid}: expected one debit of {amount} and no refund, got {ledger}");
                    }

                    if (chaos.HoldsMoney && (paymentHolds.Count != 1 || paymentHolds[0].State != "captured" || paymentHolds[0].Amount != amount))
                    {
                        _violations.Enqueue($"payment hold of committed {gid}: expected one captured hold of {amount}, got {holds}");
                    }

                    var ordered = order is null ? [] : Quantities(order["items"]!.AsArray());
                    if (stock.Keys.Any(state => state != "sold") || Describe(stock.GetValueOrDefault("sold") ?? []) != Describe(ordered))
                    {
                        _violations.Enqueue($"stock of committed {gid}: expected sold {Describe(ordered)} and nothing else, got {stockText}");
                    }

                    break;
                case "aborted":
                    if (chaos.HoldsMoney ? entries.Count > 0 : debits.Count > 1 || refunds != debits.Count)
                    {
                        _violations.Enqueue($"ledger of aborted {gid}: expected {(chaos.HoldsMoney ? "nothing" : "as many refunds as debits, at most one")}, got {ledger}");
                    }

                    if (chaos.HoldsMoney && paymentHolds.Any(h => h.State != "released"))
                    {
                        _violations.Enqueue($"payment hold of aborted {gid}: expected none or released, got {holds}");
                    }

                    if (stock.ContainsKey("held") || stock.ContainsKey("sold"))
                    {
                        _violations.Enqueue($"stock of aborted {gid}: expected nothing held or sold, got {stockText}");
                    }

                    break;
            }
        }

        if (!chaos.HoldsMoney && effects.PaymentHolds.Count > 0)
        {
            _violations.Enqueue($"payment holds under {chaos.Name}, which debits at once: {string.Join(", ", effects.PaymentHolds.Select(h => h.Gid))}");
        }

        var unknown = ledgerByGid.Select(g => g.Key).Concat(paymentHoldsByGid.Select(g => g.Key)).Concat(stockHoldsByGid.Select(g => g.Key))
            .Where(g => !transactions.ContainsKey(g)).Distinct(StringComparer.Ordinal).ToList();
        if (unknown.Count > 0)
        {
            _violations.Enqueue($"effects of transactions the coordinator does not know: {string.Join(", ", unknown)}");
        }
    }

    /// <summary>
    /// Each participant counts the calls that changed data (<c>/_faults/calls</c>): every effect in
    /// the databases was applied by exactly one call, however often the coordinator resent it. Under
    /// 2PC and 3PC a participant's in-doubt resolver may run an outcome (commit/rollback,
    /// doCommit/abort) itself, without a call: there the calls applied at most the rows, and
    /// <see cref="CheckEffectsPerTransaction"/> checks the rows are exact. The order service's
    /// outbox also cancels an order whose transaction aborted without it: its cancel calls
    /// applied at most the cancelled orders.
    /// </summary>
    private async Task CheckAppliedOnceAsync(DemoEnvironment env, ProtocolCase chaos, Effects effects, CancellationToken ct)
    {
        var counts = new List<string>();
        foreach (var (url, path, rows, exact) in chaos.Counters(env, effects))
        {
            var count = await env.GetJsonAsync($"{url}/_faults/calls?path={Uri.EscapeDataString(path)}", ct);
            var (calls, applied) = (count["calls"]!.GetValue<long>(), count["applied"]!.GetValue<long>());
            counts.Add($"{path} {calls} calls, {applied} applied, {rows} rows");
            if (exact ? applied != rows : applied > rows)
            {
                _violations.Enqueue($"{path}: {applied} calls applied an effect, the database holds {rows}{(exact ? "" : " (expected at most that)")}");
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

    /// <summary>The quantity per SKU of order lines or stock holds (objects with <c>sku</c> and <c>qty</c>).</summary>
    private static Dictionary<string, int> Quantities(IEnumerable<JsonNode?> lines) =>
        lines.GroupBy(l => Str(l, "sku")!, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Sum(l => l!["qty"]!.GetValue<int>()), StringComparer.Ordinal);

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

    /// <summary>
    /// One protocol as this test drives it: the op whose fault rules slow it (the Shop serves
    /// <c>/{protocol}/{service}/{op}</c>), the services' <c>--in-doubt-after</c>, and which counter of
    /// <c>/_faults/calls</c> must match which rows of the databases.
    /// </summary>
    private sealed record ProtocolCase(string Name, string FirstOp, bool HoldsMoney, TimeSpan? InDoubtAfter,
        Func<DemoEnvironment, Effects, IEnumerable<(string Url, string Path, int Rows, bool Exact)>> Counters)
    {
        public static ProtocolCase Of(string protocol) => protocol switch
        {
            "saga" => Saga,
            "tcc" => Holding("tcc", "try", "confirm", "cancel", inDoubtAfter: null, outcomeMayRunLocally: false),

            // Presumed abort: rollbacks a kill cut are not resent (the restarted coordinator has the
            // transaction aborted and owes nothing more), so the prepared participants must ask. A
            // 2PC participant never decides alone: any value is safe, a short one settles sooner.
            "2pc" => Holding("2pc", "prepare", "commit", "rollback", TimeSpan.FromSeconds(3), outcomeMayRunLocally: true),

            // A 3PC participant that cannot reach its coordinator this long after its vote decides
            // alone (Skeen's termination rule), which can break atomicity: 3PC's documented
            // weakness, not what this test is about. So it must exceed the longest outage here. Up
            // to 5 kills may come back to back (a kill that is due fires as soon as the restarted
            // coordinator is healthy), each a pause of at most 1 s and a restart of 1-3 s: about 20
            // s at worst. 30 s leaves a margin and stays well below SettlePatience.
            "3pc" => Holding("3pc", "canCommit", "doCommit", "abort", TimeSpan.FromSeconds(30), outcomeMayRunLocally: true),
            _ => throw new ArgumentOutOfRangeException(nameof(protocol), protocol, "saga, tcc, 2pc or 3pc"),
        };

        public string Path(string service, string op) => $"/{Name}/{service}/{op}";

        /// <summary>
        /// The saga debits the money at once (its compensation refunds it), holds the stock, sells it
        /// after the pivot (the order's confirm) or releases it. Saga ops are only ever run by the
        /// coordinator's calls: every counter is exact, except the order's cancel (the order outbox
        /// cancels an order whose create compensation was answered as a null compensation).
        /// </summary>
        private static readonly ProtocolCase Saga = new("saga", "reserve", HoldsMoney: false, InDoubtAfter: null, (env, effects) =>
        [
            (env.PaymentUrl, "/saga/payment/reserve", effects.LedgerRows("debit"), true),
            (env.PaymentUrl, "/saga/payment/refund", effects.LedgerRows("refund"), true),
            (env.InventoryUrl, "/saga/inventory/reserve", effects.StockGids(state: null), true),
            (env.InventoryUrl, "/saga/inventory/commit", effects.StockGids("sold"), true),
            (env.InventoryUrl, "/saga/inventory/release", effects.StockGids("released"), true),
            (env.OrderUrl, "/saga/order/confirm", effects.OrderRows("CONFIRMED"), true),
            (env.OrderUrl, "/saga/order/cancel", effects.OrderRows("CANCELLED"), false),
        ]);

        /// <summary>
        /// TCC, 2PC, 3PC: the first op holds money and stock; the commit op captures the money (a
        /// ledger debit) and sells the stock; the abort op releases both. The forward op is always
        /// a call: exact. The outcome ops are exact unless a participant's in-doubt resolver may
        /// run them without a call (2PC, 3PC); the order's cancel never is (the outbox).
        /// </summary>
        private static ProtocolCase Holding(string name, string first, string commit, string abort, TimeSpan? inDoubtAfter, bool outcomeMayRunLocally)
        {
            var exact = !outcomeMayRunLocally;
            return new(name, first, HoldsMoney: true, inDoubtAfter, (env, effects) =>
            [
                (env.PaymentUrl, $"/{name}/payment/{first}", effects.PaymentHoldRows(state: null), true),
                (env.PaymentUrl, $"/{name}/payment/{commit}", effects.PaymentHoldRows("captured"), exact),
                (env.PaymentUrl, $"/{name}/payment/{abort}", effects.PaymentHoldRows("released"), exact),
                (env.InventoryUrl, $"/{name}/inventory/{first}", effects.StockGids(state: null), true),
                (env.InventoryUrl, $"/{name}/inventory/{commit}", effects.StockGids("sold"), exact),
                (env.InventoryUrl, $"/{name}/inventory/{abort}", effects.StockGids("released"), exact),
                (env.OrderUrl, $"/{name}/order/{commit}", effects.OrderRows("CONFIRMED"), exact),
                (env.OrderUrl, $"/{name}/order/{abort}", effects.OrderRows("CANCELLED"), false),
            ]);
        }
    }

    /// <summary>One row of the payment service's <c>payment_holds</c>.</summary>
    private sealed record PaymentHold(string Gid, decimal Amount, string State);

    /// <summary>What the transactions left in the Shop's databases, read once after the run settled.</summary>
    private sealed record Effects(List<JsonNode> Ledger, List<PaymentHold> PaymentHolds, List<JsonNode> StockHolds, List<JsonNode> Orders)
    {
        public static async Task<Effects> ReadAsync(DemoEnvironment env, List<JsonNode> orders, CancellationToken ct)
        {
            var ledger = new List<JsonNode>();
            foreach (var customer in Customers)
            {
                ledger.AddRange((await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}/ledger", ct))["entries"]!.AsArray().Select(e => e!));
            }

            var stockHolds = new List<JsonNode>();
            foreach (var sku in Skus)
            {
                stockHolds.AddRange((await env.GetJsonAsync($"{env.InventoryUrl}/stock/{sku}/holds", ct))["holds"]!.AsArray().Select(h => h!));
            }

            return new Effects(ledger, await ReadPaymentHoldsAsync(env, ct), stockHolds, orders);
        }

        public int LedgerRows(string kind) => Ledger.Count(e => Str(e, "kind") == kind);

        public int PaymentHoldRows(string? state) => PaymentHolds.Count(h => state is null || h.State == state);

        /// <summary>The gids with a stock hold (in <paramref name="state"/>): one call holds, sells or releases every line of a gid.</summary>
        public int StockGids(string? state) =>
            StockHolds.Where(h => state is null || Str(h, "state") == state).Select(h => Str(h, "gid")).Distinct(StringComparer.Ordinal).Count();

        public int OrderRows(string status) => Orders.Count(o => Str(o, "status") == status);

        /// <summary>
        /// The payment service shows its ledger over HTTP but not its holds: read them from its
        /// SQLite file, read-only, while it runs (WAL lets a reader in beside the writer).
        /// </summary>
        private static async Task<List<PaymentHold>> ReadPaymentHoldsAsync(DemoEnvironment env, CancellationToken ct)
        {
            var file = new SqliteConnectionStringBuilder
            {
                DataSource = System.IO.Path.Combine(env.Root, "payment", "payment.db"),
                Mode = SqliteOpenMode.ReadOnly,
                Pooling = false, // the file is deleted with the environment
            };
            await using var connection = new SqliteConnection(file.ToString());
            await connection.OpenAsync(ct);
            await using var command = connection.CreateCommand();
            command.CommandText = "SELECT gid, amount_cents, state FROM payment_holds ORDER BY gid";
            await using var reader = await command.ExecuteReaderAsync(ct);
            var holds = new List<PaymentHold>();
            while (await reader.ReadAsync(ct))
            {
                holds.Add(new PaymentHold(reader.GetString(0), reader.GetInt64(1) / 100m, reader.GetString(2)));
            }

            return holds;
        }
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
