using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace Treaty.Cli;

/// <summary>The result of one demo scenario: what happened and every invariant check.</summary>
internal sealed record ScenarioResult(string Name, string Outcome, TimeSpan Duration, IReadOnlyList<Check> Checks, string? Gid)
{
    public bool Passed => Checks.All(c => c.Passed);
}

/// <summary>One invariant or expectation.</summary>
internal sealed record Check(string What, bool Passed, string? Detail = null);

/// <summary>The demo's scenarios, run through real HTTP against real processes.</summary>
internal sealed class DemoScenarios(DemoEnvironment env, Func<string, Task>? showStuck, Func<string, Task>? retry)
{
    private static readonly decimal InitialMoney = 2000.00m + 50.00m;
    private static readonly Dictionary<string, int> InitialStock = new() { ["book"] = 100, ["laptop"] = 5, ["pen"] = 0 };
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan Settling = TimeSpan.FromSeconds(10);

    public IEnumerable<(string Name, Func<CancellationToken, Task<ScenarioResult>> Run)> All() =>
    [
        ("happy path", HappyPathAsync),
        ("payment declined", DeclinedAsync),
        ("out of stock after payment", OutOfStockAsync),
        ("coordinator killed mid-saga", CoordinatorKilledAsync),
        ("participant 503 twice", FlakyParticipantAsync),
        ("compensation keeps failing", StuckCompensationAsync),
    ];

    private async Task<ScenarioResult> HappyPathAsync(CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var before = await WalletAsync("alice", ct);
        var (orderId, gid) = await CheckoutAsync("alice", [("book", 2)], ct);
        var tx = await WaitTerminalAsync(gid, ct);
        var order = await OrderAsync(orderId, ct);
        var after = await WalletAsync("alice", ct);
        var checks = new List<Check>
        {
            Expect("transaction committed", Str(tx, "status"), "committed"),
            Expect("order confirmed", Str(order, "status"), "CONFIRMED"),
            Expect("wallet debited 50.00", after - before, -50.00m),
        };
        return await FinishAsync("happy path", tx, clock, checks, ct);
    }

    private async Task<ScenarioResult> DeclinedAsync(CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var before = await WalletAsync("alice", ct);
        var (orderId, gid) = await CheckoutAsync("alice", [("laptop", 1)], ct);
        var tx = await WaitTerminalAsync(gid, ct);
        var order = await OrderAsync(orderId, ct);
        var checks = new List<Check>
        {
            Expect("transaction aborted", Str(tx, "status"), "aborted"),
            Expect("order cancelled", Str(order, "status"), "CANCELLED"),
            Expect("wallet unchanged", await WalletAsync("alice", ct) - before, 0m),
            Expect("payment not compensated (nothing was applied)", OpStatus(tx, "payment", "compensate"), "not-started"),
        };
        return await FinishAsync("payment declined", tx, clock, checks, ct);
    }

    private async Task<ScenarioResult> OutOfStockAsync(CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var before = await WalletAsync("alice", ct);
        var (orderId, gid) = await CheckoutAsync("alice", [("pen", 1)], ct);
        var tx = await WaitTerminalAsync(gid, ct);
        var order = await OrderAsync(orderId, ct);
        var checks = new List<Check>
        {
            Expect("transaction aborted", Str(tx, "status"), "aborted"),
            Expect("payment refunded", OpStatus(tx, "payment", "compensate"), "succeeded"),
            Expect("order cancelled", Str(order, "status"), "CANCELLED"),
            Expect("wallet unchanged", await WalletAsync("alice", ct) - before, 0m),
            await LedgerOnceAsync("alice", gid, expectRefund: true, ct),
        };
        return await FinishAsync("out of stock after payment", tx, clock, checks, ct);
    }

    private async Task<ScenarioResult> CoordinatorKilledAsync(CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var before = await WalletAsync("bob", ct);
        var stockBefore = await StockAsync("book", ct);
        // Hold the inventory step in flight long enough to kill the coordinator under it.
        await env.SetFaultAsync(env.InventoryUrl, "/saga/inventory/reserve", failTimes: 0, status: 503, delayMs: 3000, ct);
        var (orderId, gid) = await CheckoutAsync("bob", [("book", 1)], ct);
        var inFlight = await PollAsync(gid, tx => OpStatus(tx, "inventory", "action") == "in-flight", ct);
        var killedPid = env.CoordinatorPid;
        env.KillCoordinator();
        await env.StartCoordinatorAsync(ct);
        await env.ClearFaultsAsync(ct);
        var tx = await WaitTerminalAsync(gid, ct);
        var order = await OrderAsync(orderId, ct);
        var stockAfter = await StockAsync("book", ct);
        var checks = new List<Check>
        {
            new("coordinator SIGKILLed while inventory.action was in flight", inFlight, $"pid {killedPid} killed, restarted as pid {env.CoordinatorPid}"),
            Expect("transaction committed after restart", Str(tx, "status"), "committed"),
            Expect("order confirmed", Str(order, "status"), "CONFIRMED"),
            Expect("wallet debited exactly once", await WalletAsync("bob", ct) - before, -25.00m),
            Expect("stock sold exactly once", stockAfter.Sold - stockBefore.Sold, 1),
            await LedgerOnceAsync("bob", gid, expectRefund: false, ct),
        };
        return await FinishAsync("coordinator killed mid-saga", tx, clock, checks, ct);
    }

    private async Task<ScenarioResult> FlakyParticipantAsync(CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        await env.SetFaultAsync(env.PaymentUrl, "/saga/payment/reserve", failTimes: 2, status: 503, delayMs: 0, ct);
        var before = await WalletAsync("alice", ct);
        var (orderId, gid) = await CheckoutAsync("alice", [("book", 1)], ct);
        var tx = await WaitTerminalAsync(gid, ct);
        await env.ClearFaultsAsync(ct);
        var order = await OrderAsync(orderId, ct);
        var attempts = tx["branches"]?.AsArray().FirstOrDefault(b => Str(b, "name") == "payment")?["ops"]?["action"]?["attempts"]?.GetValue<int>();
        var checks = new List<Check>
        {
            Expect("transaction committed", Str(tx, "status"), "committed"),
            Expect("payment.action took 3 attempts (503, 503, 200)", attempts, 3),
            Expect("order confirmed", Str(order, "status"), "CONFIRMED"),
            Expect("wallet debited once", await WalletAsync("alice", ct) - before, -25.00m),
            await LedgerOnceAsync("alice", gid, expectRefund: false, ct),
        };
        return await FinishAsync("participant 503 twice", tx, clock, checks, ct);
    }

    private async Task<ScenarioResult> StuckCompensationAsync(CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        await env.SetFaultAsync(env.PaymentUrl, "/saga/payment/refund", failTimes: -1, status: 503, delayMs: 0, ct);
        var before = await WalletAsync("alice", ct);
        var (orderId, gid) = await CheckoutAsync("alice", [("pen", 1)], ct);
        var stuck = await PollAsync(gid, tx => tx["stuck"]?.GetValue<bool>() == true, ct);
        var listed = false;
        if (stuck)
        {
            var list = await env.GetJsonAsync($"{env.CoordinatorUrl}/api/v1/transactions?stuck=true&limit=500", ct);
            listed = list["items"]!.AsArray().Any(i => Str(i, "gid") == gid);
            if (showStuck is not null)
            {
                await showStuck(gid);
            }
        }

        await env.ClearFaultsAsync(ct);
        if (retry is not null)
        {
            await retry(gid);
        }
        else
        {
            using var response = await env.Http.PostAsync($"{env.CoordinatorUrl}/api/v1/transactions/{gid}/retry", null, ct);
            response.EnsureSuccessStatusCode();
        }

        var tx = await WaitTerminalAsync(gid, ct);
        var order = await OrderAsync(orderId, ct);
        var checks = new List<Check>
        {
            new("stuck after the refund ran out of attempts", stuck),
            new("listed by tx list --stuck", listed),
            Expect("after tx retry: aborted", Str(tx, "status"), "aborted"),
            Expect("no longer stuck", tx["stuck"]?.GetValue<bool>(), false),
            Expect("order cancelled", Str(order, "status"), "CANCELLED"),
            Expect("wallet unchanged", await WalletAsync("alice", ct) - before, 0m),
            await LedgerOnceAsync("alice", gid, expectRefund: true, ct),
        };
        return await FinishAsync("compensation keeps failing", tx, clock, checks, ct);
    }

    /// <summary>Checks every system-wide invariant and completes the scenario's result.</summary>
    private async Task<ScenarioResult> FinishAsync(string name, JsonNode tx, Stopwatch clock, List<Check> checks, CancellationToken ct)
    {
        checks.AddRange(await InvariantsAsync(ct));
        var outcome = Str(tx, "status") + (tx["stuck"]?.GetValue<bool>() == true ? " (stuck)" : "");
        return new ScenarioResult(name, outcome, clock.Elapsed, checks, Str(tx, "gid"));
    }

    /// <summary>Money and stock conserved, nothing held, every transaction terminal or visibly stuck, no order left PENDING.</summary>
    public async Task<IReadOnlyList<Check>> InvariantsAsync(CancellationToken ct)
    {
        await NothingHeldAsync(ct);
        var checks = new List<Check>();
        var orders = (await env.GetJsonAsync(env.OrderUrl + "/orders", ct))["orders"]!.AsArray();
        var confirmed = orders.Where(o => Str(o, "status") == "CONFIRMED").ToList();
        var balances = 0m;
        var held = 0m;
        foreach (var customer in new[] { "alice", "bob" })
        {
            var wallet = await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}", ct);
            balances += Dec(wallet, "balance");
            held += Dec(wallet, "held");
        }

        var sold = confirmed.Sum(o => Dec(o, "amount"));
        checks.Add(Expect("money conserved (wallets + held + confirmed orders = 2050.00)", balances + held + sold, InitialMoney));
        checks.Add(Expect("no money held", held, 0m));
        foreach (var (sku, initial) in InitialStock)
        {
            var stock = await StockAsync(sku, ct);
            checks.Add(Expect($"{sku}: available + held + sold = {initial}", stock.Available + stock.Held + stock.Sold, initial));
            checks.Add(Expect($"{sku}: nothing held", stock.Held, 0));
            var soldQty = confirmed.SelectMany(o => o!["items"]!.AsArray()).Where(i => Str(i, "sku") == sku).Sum(i => i!["qty"]!.GetValue<int>());
            checks.Add(Expect($"{sku}: sold = quantity of confirmed orders", stock.Sold, soldQty));
        }

        var open = new List<string>();
        foreach (var status in new[] { "prepared", "pending", "running", "aborting" })
        {
            var page = await env.GetJsonAsync($"{env.CoordinatorUrl}/api/v1/transactions?status={status}&limit=500", ct);
            open.AddRange(page["items"]!.AsArray().Where(i => i!["stuck"]?.GetValue<bool>() != true).Select(i => Str(i, "gid")!));
        }

        checks.Add(new Check("every transaction terminal or visibly stuck", open.Count == 0, open.Count == 0 ? null : "open: " + string.Join(", ", open)));
        var pending = orders.Where(o => Str(o, "status") == "PENDING").Select(o => Str(o, "orderId")).ToList();
        checks.Add(new Check("no order left PENDING", pending.Count == 0, pending.Count == 0 ? null : string.Join(", ", pending)));
        return checks;
    }

    public async Task<Check> LedgerOnceAsync(string customer, string gid, bool expectRefund, CancellationToken ct)
    {
        var ledger = await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}/ledger", ct);
        var entries = (ledger is JsonArray array ? array : ledger["entries"]!.AsArray()).Where(e => Str(e, "gid") == gid).ToList();
        var debits = entries.Count(e => Str(e, "kind") == "debit");
        var refunds = entries.Count(e => Str(e, "kind") == "refund");
        var expected = expectRefund ? "1 debit, 1 refund" : "1 debit, 0 refunds";
        var actual = $"{debits} debit, {refunds} refund" + (refunds == 1 ? "" : "s");
        return new Check($"ledger: {expected} for this gid", debits == 1 && refunds == (expectRefund ? 1 : 0), actual);
    }

    public async Task<(string OrderId, string Gid)> CheckoutAsync(string customer, (string Sku, int Qty)[] items, CancellationToken ct,
        string protocol = "saga", string? idempotencyKey = null)
    {
        var body = new JsonObject
        {
            ["customerId"] = customer,
            ["items"] = new JsonArray([.. items.Select(i => (JsonNode)new JsonObject { ["sku"] = i.Sku, ["qty"] = i.Qty })]),
            ["protocol"] = protocol,
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, env.OrderUrl + "/checkout") { Content = JsonContent.Create(body) };
        request.Headers.Add("Idempotency-Key", idempotencyKey ?? Guid.NewGuid().ToString());
        using var response = await env.Http.SendAsync(request, ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        if (!response.IsSuccessStatusCode)
        {
            throw new InvalidOperationException($"checkout answered {(int)response.StatusCode}: {text}");
        }

        var json = JsonNode.Parse(text)!;
        return (Str(json, "orderId")!, Str(json, "gid")!);
    }

    /// <summary>The order once it has left PENDING (its outcome reached the Order service), or as it is after the patience ran out.</summary>
    public async Task<JsonNode> OrderAsync(string orderId, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var order = await env.GetJsonAsync($"{env.OrderUrl}/orders/{orderId}", ct);
            if (Str(order, "status") != "PENDING" || clock.Elapsed > Patience)
            {
                return order;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(25), TimeProvider.System, ct);
        }
    }

    /// <summary>
    /// Waits (up to <see cref="Settling"/>) until no wallet and no stock holds anything. An aborted
    /// 2PC or 3PC is terminal at its decision: presumed abort sends the rollbacks without waiting for
    /// them, so the participants release their holds a moment later. The checks that follow still
    /// fail if something stays held.
    /// </summary>
    public async Task NothingHeldAsync(CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < Settling)
        {
            var held = 0m;
            foreach (var customer in new[] { "alice", "bob" })
            {
                held += Dec(await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}", ct), "held");
            }

            foreach (var sku in InitialStock.Keys)
            {
                held += (await StockAsync(sku, ct)).Held;
            }

            if (held == 0)
            {
                return;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }
    }

    public async Task<decimal> WalletAsync(string customer, CancellationToken ct) =>
        Dec(await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}", ct), "balance");

    public async Task<(int Available, int Held, int Sold)> StockAsync(string sku, CancellationToken ct)
    {
        var stock = await env.GetJsonAsync($"{env.InventoryUrl}/stock/{sku}", ct);
        return (stock["available"]!.GetValue<int>(), stock["held"]!.GetValue<int>(), stock["sold"]!.GetValue<int>());
    }

    public async Task<JsonNode> WaitTerminalAsync(string gid, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var tx = await TryGetTransactionAsync(gid, ct);
            if (tx is not null && Str(tx, "status") is "committed" or "aborted")
            {
                return tx;
            }

            if (clock.Elapsed > Patience)
            {
                throw new TimeoutException($"Transaction {gid} did not finish within {Patience.TotalSeconds:0} s: {tx?.ToJsonString()}");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }
    }

    public async Task<bool> PollAsync(string gid, Func<JsonNode, bool> condition, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < Patience)
        {
            var tx = await TryGetTransactionAsync(gid, ct);
            if (tx is not null && condition(tx))
            {
                return true;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(25), TimeProvider.System, ct);
        }

        return false;
    }

    private async Task<JsonNode?> TryGetTransactionAsync(string gid, CancellationToken ct)
    {
        using var response = await env.Http.GetAsync($"{env.CoordinatorUrl}/api/v1/transactions/{gid}", ct);
        return response.IsSuccessStatusCode ? JsonNode.Parse(await response.Content.ReadAsStringAsync(ct)) : null;
    }

    public static string? OpStatus(JsonNode tx, string branch, string op) =>
        Str(tx["branches"]?.AsArray().FirstOrDefault(b => Str(b, "name") == branch)?["ops"]?[op], "status") ?? "absent";

    public static string? Str(JsonNode? node, string property) => node?[property]?.GetValue<string>();

    public static decimal Dec(JsonNode? node, string property)
    {
        var value = node?[property] ?? throw new InvalidOperationException($"missing '{property}' in {node?.ToJsonString()}");
        return value.GetValueKind() == System.Text.Json.JsonValueKind.String
            ? decimal.Parse(value.GetValue<string>(), CultureInfo.InvariantCulture)
            : value.GetValue<decimal>();
    }

    public static Check Expect<T>(string what, T actual, T expected) =>
        new(what, EqualityComparer<T>.Default.Equals(actual, expected), $"expected {expected}, got {actual}");
}
