using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.Data.Sqlite;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

/// <summary>
/// The choreographed checkout survives a real SIGKILL at the messaging kit's two crash points, on
/// every transport (one subclass each): a consumer killed after its inbox transaction committed and
/// before the transport was told (no HTTP answer, no basic.ack), and an outbox relay killed after
/// the transport took a message and before its row was marked sent. The Shop's <c>/_faults</c>
/// holds (<c>holdAfterCommit</c>, <c>holdAfterSend</c>) stop the service exactly there; the test
/// sees the committed effect, kills the process by pid, restarts it on the same data directory and
/// port, and checks that the message came again, that the consumer's inbox dropped the copy (its
/// handler did not run a second time), and that the effect happened exactly once.
/// </summary>
public abstract class ChoreographyCrashTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private protected abstract DemoEnvironment Env { get; }

    /// <summary>The embedded transport waits for the consumer's HTTP answer; RabbitMQ's relay is done once the broker confirmed.</summary>
    private protected abstract bool SendWaitsForTheConsumer { get; }

    private ChoreographyShop Shop => new(Env);

    [Fact]
    public async Task ConsumerKilledAfterItsCommitBeforeItsAck_Restarted_TheRedeliveryIsDroppedByItsInbox_OneDebit()
    {
        var ct = CancellationToken.None;
        var balance = await Shop.BalanceAsync("alice", ct);
        var book = await Shop.StockAsync("book", ct);
        var killed = Env.Shop("payment");
        var killedPid = killed.Id;
        try
        {
            await ArmHoldAsync(Env.PaymentUrl, "order.created", "holdAfterCommit", ct);
            var (orderId, gid) = await Shop.CheckoutAsync("alice", "book", 1, ct);

            // Payment handled order.created and committed: the debit and the inbox row are there, the transport was not told.
            var messageId = await WaitHeldAsync(Env.PaymentUrl, "order.created", ct);
            (await Shop.LedgerAsync("alice", gid, ct)).ShouldBe((1, 0), "the debit committed before the kill");
            InboxRows("payment", messageId).ShouldBe(1);
            if (SendWaitsForTheConsumer)
            {
                OutboxSentAt("order", messageId).ShouldBeNull("order's relay has had no answer");
            }

            output.WriteLine($"{gid}: payment (pid {killedPid}) holds order.created {messageId} after its commit; SIGKILL");
            killed.Kill();
            killed.HasExited.ShouldBeTrue();
            await Env.RestartShopAsync("payment", ct);
            Env.Shop("payment").Id.ShouldNotBe(killedPid);

            // The message comes again (order's relay resends it; the broker requeued the unacked delivery) ...
            await EventuallyAsync(async () => (await DeliveriesAsync(Env.PaymentUrl, "order.created", ct)).Calls >= 1,
                "the restarted payment service gets order.created again", ct);
            if (SendWaitsForTheConsumer)
            {
                await EventuallyAsync(() => Task.FromResult(OutboxSentAt("order", messageId) is not null), "order's relay marks the row sent", ct);
            }

            // ... and the checkout ends as if nothing had happened, with one debit.
            (await Shop.WaitTerminalAsync(gid, ct))["status"]!.GetValue<string>().ShouldBe("committed");
            (await Shop.WaitOrderDecidedAsync(orderId, ct))["status"]!.GetValue<string>().ShouldBe("CONFIRMED");
            var redelivered = await DeliveriesAsync(Env.PaymentUrl, "order.created", ct);
            output.WriteLine($"restarted payment: order.created delivered {redelivered.Calls}×, handled {redelivered.Applied}×");
            redelivered.Applied.ShouldBe(0, "the inbox dropped the redelivery: the handler did not run again");
            InboxRows("payment", messageId).ShouldBe(1);
            FailedAttempts("payment", messageId).ShouldBe(0, "dropped as a duplicate, not failed, retried or dead-lettered");
            (await Shop.LedgerAsync("alice", gid, ct)).ShouldBe((1, 0), "one debit");
            (balance - await Shop.BalanceAsync("alice", ct)).ShouldBe(25.00m);
            await ShouldHaveSoldOneBookAsync(book, ct);
            (await Shop.HeldMoneyAsync("alice", ct)).ShouldBe(0m);
        }
        finally
        {
            await ReleaseAsync(ct);
        }
    }

    [Fact]
    public async Task RelayKilledAfterItsSendBeforeMarkingTheRowSent_Restarted_TheResendIsDroppedByTheConsumersInbox_StockTakenOnce()
    {
        var ct = CancellationToken.None;
        var balance = await Shop.BalanceAsync("bob", ct);
        var book = await Shop.StockAsync("book", ct);
        var before = await DeliveriesAsync(Env.InventoryUrl, "payment.reserved", ct);
        var killed = Env.Shop("payment");
        var killedPid = killed.Id;
        try
        {
            await ArmHoldAsync(Env.PaymentUrl, "payment.reserved", "holdAfterSend", ct);
            var (orderId, gid) = await Shop.CheckoutAsync("bob", "book", 1, ct);

            // Payment's relay handed payment.reserved over and stopped before marking the row sent; inventory takes the stock.
            var messageId = await WaitHeldAsync(Env.PaymentUrl, "payment.reserved", ct);
            await EventuallyAsync(async () => (await DeliveriesAsync(Env.InventoryUrl, "payment.reserved", ct)).Applied == before.Applied + 1,
                "inventory handles payment.reserved", ct);
            InboxRows("inventory", messageId).ShouldBe(1);
            OutboxSentAt("payment", messageId).ShouldBeNull("the relay was stopped before marking the row sent");

            output.WriteLine($"{gid}: payment (pid {killedPid}) holds its relay after sending payment.reserved {messageId}; SIGKILL");
            killed.Kill();
            killed.HasExited.ShouldBeTrue();
            await Env.RestartShopAsync("payment", ct);

            // The restarted relay finds the row unsent and sends it again; inventory gets the copy and drops it.
            await EventuallyAsync(() => Task.FromResult(OutboxSentAt("payment", messageId) is not null), "the restarted relay marks the row sent", ct);
            await EventuallyAsync(async () => (await DeliveriesAsync(Env.InventoryUrl, "payment.reserved", ct)).Calls >= before.Calls + 2,
                "inventory gets payment.reserved a second time", ct);

            (await Shop.WaitTerminalAsync(gid, ct))["status"]!.GetValue<string>().ShouldBe("committed");
            (await Shop.WaitOrderDecidedAsync(orderId, ct))["status"]!.GetValue<string>().ShouldBe("CONFIRMED");
            var after = await DeliveriesAsync(Env.InventoryUrl, "payment.reserved", ct);
            output.WriteLine($"inventory: payment.reserved delivered {after.Calls - before.Calls}×, handled {after.Applied - before.Applied}×");
            (after.Applied - before.Applied).ShouldBe(1, "the inbox dropped the resent copy: the handler ran once");
            InboxRows("inventory", messageId).ShouldBe(1);
            FailedAttempts("inventory", messageId).ShouldBe(0, "dropped as a duplicate, not failed, retried or dead-lettered");
            var holds = (await Env.GetJsonAsync($"{Env.InventoryUrl}/stock/book/holds", ct))["holds"]!.AsArray()
                .Where(h => h!["gid"]!.GetValue<string>() == gid).ToList();
            holds.Count.ShouldBe(1, "the stock was taken once");
            await ShouldHaveSoldOneBookAsync(book, ct);
            (await Shop.LedgerAsync("bob", gid, ct)).ShouldBe((1, 0));
            (balance - await Shop.BalanceAsync("bob", ct)).ShouldBe(25.00m);
            (await Shop.HeldMoneyAsync("bob", ct)).ShouldBe(0m);
        }
        finally
        {
            await ReleaseAsync(ct);
        }
    }

    private async Task ShouldHaveSoldOneBookAsync((int Available, int Held, int Sold) before, CancellationToken ct)
    {
        var after = await Shop.StockAsync("book", ct);
        (after.Sold - before.Sold).ShouldBe(1, "one book sold");
        (after.Available + after.Sold).ShouldBe(before.Available + before.Sold, "stock conserved");
        after.Held.ShouldBe(0);
    }

    private async Task ArmHoldAsync(string serviceUrl, string type, string at, CancellationToken ct)
    {
        using var response = await Env.Http.PostAsJsonAsync(serviceUrl + "/_faults", new JsonObject { ["messageType"] = type, [at] = true }, ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        response.IsSuccessStatusCode.ShouldBeTrue(text);
    }

    /// <summary>Waits until the service's hold of <paramref name="type"/> caught a message; returns its id.</summary>
    private async Task<string> WaitHeldAsync(string serviceUrl, string type, CancellationToken ct)
    {
        string? held = null;
        await EventuallyAsync(async () =>
        {
            var holds = (await Env.GetJsonAsync(serviceUrl + "/_faults", ct))["holds"]!.AsArray();
            held = holds.FirstOrDefault(h => h!["messageType"]!.GetValue<string>() == type)?["heldMessageId"]?.GetValue<string>();
            return held is not null;
        }, $"{serviceUrl} holds a message of {type}", ct);
        return held!;
    }

    private async Task<(long Calls, long Applied)> DeliveriesAsync(string serviceUrl, string type, CancellationToken ct)
    {
        var count = await Env.GetJsonAsync($"{serviceUrl}/_faults/calls?path={Uri.EscapeDataString("message:" + type)}", ct);
        return (count["calls"]!.GetValue<long>(), count["applied"]!.GetValue<long>());
    }

    /// <summary>Clears the rules (an untriggered hold must not stop a later test) and lets anything still held go on.</summary>
    private async Task ReleaseAsync(CancellationToken ct)
    {
        try
        {
            await Env.ClearFaultsAsync(ct);
        }
        catch (HttpRequestException e)
        {
            output.WriteLine($"clearing the faults: {e.Message}");
        }
    }

    private long InboxRows(string service, string messageId) =>
        Query<long>(service, "SELECT COUNT(*) FROM treaty_inbox WHERE subscriber = $s AND message_id = $id", ("$s", service), ("$id", messageId));

    /// <summary>Failed handlings of the message (each one recorded; the last also moves it to the dead letters).</summary>
    private long FailedAttempts(string service, string messageId) =>
        Query<long>(service, "SELECT COUNT(*) FROM treaty_attempts WHERE subscriber = $s AND message_id = $id", ("$s", service), ("$id", messageId))
        + Query<long>(service, "SELECT COUNT(*) FROM treaty_dead_letters WHERE subscriber = $s AND message_id = $id", ("$s", service), ("$id", messageId));

    private protected string? OutboxSentAt(string service, string messageId) =>
        Query<string?>(service, "SELECT sent_at FROM treaty_outbox WHERE message_id = $id", ("$id", messageId));

    private T Query<T>(string service, string sql, params (string Name, object Value)[] parameters)
    {
        using var connection = new SqliteConnection($"Data Source={Path.Combine(Env.Root, service, service + ".db")};Mode=ReadOnly;Pooling=False");
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value);
        }

        var result = command.ExecuteScalar();
        return result is null or DBNull ? default! : (T)result;
    }

    private static async Task EventuallyAsync(Func<Task<bool>> condition, string what, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            clock.Elapsed.ShouldBeLessThan(Patience, $"waited for: {what}");
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }
    }
}

/// <summary>The crash points on the embedded transport (loopback HTTP between the services).</summary>
[Collection(nameof(ChaosCollection))]
public sealed class EmbeddedChoreographyCrashTests(ShopKitEnvironment fixture, ITestOutputHelper output)
    : ChoreographyCrashTests(output), IClassFixture<ShopKitEnvironment>
{
    private protected override DemoEnvironment Env => fixture.Env;

    private protected override bool SendWaitsForTheConsumer => true;

    [Theory]
    [InlineData("""{ "messageType": "order.created" }""", "holdAfterCommit")]
    [InlineData("""{ "messageType": "order.created", "holdAfterCommit": true, "holdAfterSend": true }""", "holdAfterCommit")]
    [InlineData("""{ "messageType": " ", "holdAfterSend": true }""", "messageType")]
    [InlineData("""{ "messageType": "order.created", "holdAfterSend": true, "path": "/checkout" }""", "path")]
    [InlineData("""{ "path": "/checkout", "holdAfterCommit": true }""", "messageType")]
    public async Task MessageHold_Malformed_Is400NamingTheField_AndArmsNothing(string body, string field)
    {
        var env = fixture.Env;
        using var content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        using var response = await env.Http.PostAsync(env.PaymentUrl + "/_faults", content);
        var text = await response.Content.ReadAsStringAsync();
        ((int)response.StatusCode).ShouldBe(400, text);
        text.ShouldContain("\"" + field + "\"");
        (await env.GetJsonAsync(env.PaymentUrl + "/_faults", CancellationToken.None))["holds"]!.AsArray().ShouldBeEmpty();
    }

    [Fact]
    public async Task MessageHold_ClearedInsteadOfAKill_TheHeldDeliveryGoesOn_AndTheCheckoutCompletes()
    {
        var ct = CancellationToken.None;
        var env = fixture.Env;
        var shop = new ChoreographyShop(env);
        using (var arm = await env.Http.PostAsJsonAsync(env.InventoryUrl + "/_faults", new JsonObject { ["messageType"] = "payment.reserved", ["holdAfterCommit"] = true }, ct))
        {
            arm.EnsureSuccessStatusCode();
        }

        var (orderId, gid) = await shop.CheckoutAsync("bob", "book", 1, ct);
        var clock = Stopwatch.StartNew();
        JsonNode? hold = null;
        while (hold?["heldMessageId"] is null)
        {
            clock.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(60), "inventory holds payment.reserved");
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
            hold = (await env.GetJsonAsync(env.InventoryUrl + "/_faults", ct))["holds"]!.AsArray().SingleOrDefault();
        }

        hold["armed"]!.GetValue<bool>().ShouldBeFalse("one-shot: disarmed when it caught a message");
        var messageId = hold["heldMessageId"]!.GetValue<string>();
        OutboxSentAt("payment", messageId).ShouldBeNull("payment's relay waits for inventory's answer");

        await env.ClearFaultsAsync(ct);

        clock.Restart();
        while (OutboxSentAt("payment", messageId) is null)
        {
            clock.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(60), "inventory answers once the hold is cleared, and payment marks the row sent");
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        (await shop.WaitTerminalAsync(gid, ct))["status"]!.GetValue<string>().ShouldBe("committed");
        (await shop.WaitOrderDecidedAsync(orderId, ct))["status"]!.GetValue<string>().ShouldBe("CONFIRMED");
        (await env.GetJsonAsync(env.InventoryUrl + "/_faults", ct))["holds"]!.AsArray().ShouldBeEmpty();
    }
}

/// <summary>The crash points on RabbitMQ (a real rabbitmq-server on loopback).</summary>
[Collection(nameof(ChaosCollection))]
public sealed class RabbitMqChoreographyCrashTests(RabbitMqShopEnvironment fixture, ITestOutputHelper output)
    : ChoreographyCrashTests(output), IClassFixture<RabbitMqShopEnvironment>
{
    private protected override DemoEnvironment Env => fixture.Env;

    private protected override bool SendWaitsForTheConsumer => false;
}
