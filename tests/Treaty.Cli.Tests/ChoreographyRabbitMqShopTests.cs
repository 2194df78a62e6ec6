using System.Diagnostics;
using Treaty.Messaging.RabbitMq.Tests;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

/// <summary>A real rabbitmq-server on loopback, then the coordinator and the three Shop services with <c>--transport rabbitmq</c>.</summary>
public sealed class RabbitMqShopEnvironment : IAsyncLifetime
{
    private readonly RabbitMqBroker _broker = new();
    private DemoEnvironment? _env;

    internal DemoEnvironment Env => _env ?? throw new InvalidOperationException("not started");

    internal Uri BrokerUri => _broker.Uri;

    public async Task InitializeAsync()
    {
        await _broker.InitializeAsync();
        _env = await DemoEnvironment.StartAsync(dataDir: null, CancellationToken.None,
            shopArguments: ["--transport", "rabbitmq", "--rabbitmq", _broker.Uri.ToString()]);
    }

    public async Task DisposeAsync()
    {
        if (_env is not null)
        {
            await _env.DisposeAsync();
        }

        await _broker.DisposeAsync();
    }
}

/// <summary>
/// The Shop's choreographed checkout (<c>protocol: "choreography"</c>) with its events on RabbitMQ
/// (<c>--transport rabbitmq --rabbitmq URL</c>): one exchange, a queue per service, the same
/// outcomes and invariants as on the embedded transport (ChoreographyShopTests).
/// </summary>
[Collection(nameof(ChaosCollection))]
public sealed class ChoreographyRabbitMqShopTests(RabbitMqShopEnvironment fixture, ITestOutputHelper output) : IClassFixture<RabbitMqShopEnvironment>
{
    private DemoEnvironment Env => fixture.Env;

    private ChoreographyShop Shop => new(Env);

    [Fact]
    public async Task RabbitMq_Book_OrderConfirmed_OneDebit_StockSold_NothingHeld_TimelineCommitted()
    {
        var ct = CancellationToken.None;
        var balance = await Shop.BalanceAsync("alice", ct);
        var book = await Shop.StockAsync("book", ct);

        var (orderId, gid) = await Shop.CheckoutAsync("alice", "book", 1, ct);
        var tx = await Shop.WaitTerminalAsync(gid, ct);

        tx["status"]!.GetValue<string>().ShouldBe("committed");
        tx["protocol"]!.GetValue<string>().ShouldBe("choreography");
        await Shop.ShouldReportAsync(gid, ct, "order.created", "payment.reserved", "inventory.reserved", "order.confirmed");
        var order = await Shop.WaitOrderDecidedAsync(orderId, ct);
        order["status"]!.GetValue<string>().ShouldBe("CONFIRMED");
        (balance - await Shop.BalanceAsync("alice", ct)).ShouldBe(25.00m);
        (await Shop.LedgerAsync("alice", gid, ct)).ShouldBe((1, 0));
        var after = await Shop.StockAsync("book", ct);
        (after.Sold - book.Sold).ShouldBe(1);
        (after.Available + after.Sold).ShouldBe(book.Available + book.Sold);
        after.Held.ShouldBe(0);
        (await Shop.HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }

    [Fact]
    public async Task RabbitMq_EachServiceHasItsQueueOnTheSharedExchange_AndConsumesIt()
    {
        var factory = new RabbitMQ.Client.ConnectionFactory { Uri = fixture.BrokerUri, AutomaticRecoveryEnabled = false };
        await using var connection = await factory.CreateConnectionAsync();
        foreach (var service in new[] { "order", "payment", "inventory" })
        {
            await using var channel = await connection.CreateChannelAsync();
            // Passive: throws (404) when the queue is missing.
            var queue = await channel.QueueDeclarePassiveAsync("treaty.shop." + service);
            output.WriteLine($"{queue.QueueName}: {queue.ConsumerCount} consumer(s), {queue.MessageCount} ready");
            queue.ConsumerCount.ShouldBe(1u, service);
        }
    }

    [Fact]
    public async Task RabbitMq_PenOutOfStock_PaymentRefunded_OrderCancelledWithTheStock_MoneyConserved()
    {
        var ct = CancellationToken.None;
        var balance = await Shop.BalanceAsync("alice", ct);
        var pen = await Shop.StockAsync("pen", ct);

        var (orderId, gid) = await Shop.CheckoutAsync("alice", "pen", 1, ct);
        var tx = await Shop.WaitTerminalAsync(gid, ct);

        tx["status"]!.GetValue<string>().ShouldBe("aborted");
        await Shop.ShouldReportAsync(gid, ct, "order.created", "payment.reserved", "inventory.failed", "payment.refunded", "order.cancelled");
        var order = await Shop.WaitOrderDecidedAsync(orderId, ct);
        order["status"]!.GetValue<string>().ShouldBe("CANCELLED");
        order["reason"]!.GetValue<string>().ShouldContain("stock", Case.Insensitive);
        (await Shop.BalanceAsync("alice", ct)).ShouldBe(balance);
        (await Shop.LedgerAsync("alice", gid, ct)).ShouldBe((1, 1));
        (await Shop.StockAsync("pen", ct)).ShouldBe(pen);
        (await Shop.HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }
}

/// <summary><c>--transport</c> and <c>--rabbitmq</c>: parsed, and a service that cannot use them refuses to start, saying why.</summary>
public sealed class ShopTransportOptionsTests
{
    private static readonly string[] Base = ["--service", "payment", "--urls", "http://127.0.0.1:5002", "--data-dir", "d", "--coordinator", "http://127.0.0.1:5000"];

    [Fact]
    public void Default_IsEmbedded_WithoutABroker()
    {
        var options = Shop.ShopOptions.Parse(Base, null);
        options.Transport.ShouldBe(Shop.ShopTransport.Embedded);
        options.RabbitMqUri.ShouldBeNull();
    }

    [Fact]
    public void RabbitMq_WithAnAmqpUrl_IsParsed()
    {
        var options = Shop.ShopOptions.Parse([.. Base, "--transport", "rabbitmq", "--rabbitmq", "amqp://guest:guest@127.0.0.1:5672/"], null);
        options.Transport.ShouldBe(Shop.ShopTransport.RabbitMq);
        options.RabbitMqUri.ShouldBe("amqp://guest:guest@127.0.0.1:5672/");
    }

    [Theory]
    [InlineData(new[] { "--transport", "rabbitmq" }, "--transport rabbitmq needs the broker: --rabbitmq")]
    [InlineData(new[] { "--transport", "rabbitmq", "--rabbitmq", "http://secret@127.0.0.1:5672/" }, "--rabbitmq must be an absolute amqp:// or amqps:// URL")]
    [InlineData(new[] { "--rabbitmq", "amqp://127.0.0.1:5672/" }, "--rabbitmq is only used with --transport rabbitmq")]
    [InlineData(new[] { "--transport", "kafka" }, "--transport must be embedded or rabbitmq, not 'kafka'")]
    public void Misconfigured_Throws_NamingTheFlag(string[] extra, string message)
    {
        var e = Should.Throw<ArgumentException>(() => Shop.ShopOptions.Parse([.. Base, .. extra], null));
        e.Message.ShouldContain(message);
        e.Message.ShouldNotContain("secret");
    }

    [Fact]
    public async Task RabbitMqWithoutAUrl_TheServiceExitsWith2_AndTheErrorOnStderr()
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var arg in (string[])[Path.Combine(AppContext.BaseDirectory, "Shop.dll"), .. Base, "--transport", "rabbitmq"])
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        process.ExitCode.ShouldBe(2);
        (await stderr).ShouldContain("--transport rabbitmq needs the broker: --rabbitmq");
    }
}
