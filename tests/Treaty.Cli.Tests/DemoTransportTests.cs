using Treaty.Cli;
using Treaty.Cli.Tests.Support;
using Treaty.Messaging.RabbitMq.Tests;

namespace Treaty.Cli.Tests;

/// <summary>
/// <c>treaty demo --transport rabbitmq --rabbitmq URL</c> on a real rabbitmq-server: the demo's
/// choreography row comes out as on the embedded transport (book confirmed, the laptop over the
/// limit and the pen out of stock cancelled, every invariant held), its events having crossed the broker.
/// </summary>
[Collection(nameof(ChaosCollection))]
public sealed class DemoRabbitMqTests(RabbitMqBroker broker) : IClassFixture<RabbitMqBroker>
{
    [Fact]
    public async Task Demo_ChoreographyOverRabbitMq_SameOutcomesAndInvariantsAsEmbedded()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "treaty.dll");
        using var demo = ChildProcess.StartDotnet("demo", dll,
            ["demo", "--protocol", "choreography", "--transport", "rabbitmq", "--rabbitmq", broker.Uri.ToString()],
            new Dictionary<string, string> { ["NO_COLOR"] = "1", ["TERM"] = "dumb" });

        var exitCode = await demo.WaitForExitAsync(TimeSpan.FromMinutes(4), CancellationToken.None);

        var output = demo.Output;
        exitCode.ShouldBe(0, output);
        output.ShouldContain($"Choreography events travel over RabbitMQ at amqp://127.0.0.1:{broker.Port}/", customMessage: output);
        output.ShouldNotContain("guest:guest", customMessage: output); // the broker's credentials stay off the screen
        output.ShouldContain("✓ checkout under choreography: CONFIRMED, CANCELLED, CANCELLED", customMessage: output); // the embedded run's line (DemoTests)
        output.ShouldContain("Every invariant held.", customMessage: output);

        // The services ran on the broker: each declared its queue on the Shop's exchange.
        var factory = new RabbitMQ.Client.ConnectionFactory { Uri = broker.Uri, AutomaticRecoveryEnabled = false };
        await using var connection = await factory.CreateConnectionAsync();
        foreach (var service in new[] { "order", "payment", "inventory" })
        {
            await using var channel = await connection.CreateChannelAsync();
            (await channel.QueueDeclarePassiveAsync("treaty.shop." + service)).QueueName.ShouldBe("treaty.shop." + service); // throws (404) when missing
        }
    }
}

/// <summary>The demo's transport flags: checked before anything starts, a usage error (exit 2) naming the flag.</summary>
public sealed class DemoTransportTests
{
    [Theory]
    [InlineData(new[] { "--transport", "rabbitmq" }, "--rabbitmq")]
    [InlineData(new[] { "--transport", "kafka" }, "--transport")]
    [InlineData(new[] { "--transport", "rabbitmq", "--rabbitmq", "http://127.0.0.1:5672/" }, "--rabbitmq")]
    [InlineData(new[] { "--rabbitmq", "amqp://127.0.0.1:5672/" }, "--transport rabbitmq")]
    public async Task Demo_BadTransportFlags_ExitTwo_NamingTheFlag(string[] flags, string named)
    {
        var result = await CliRun.ProcessAsync(["demo", .. flags], environment: new Dictionary<string, string?> { ["NO_COLOR"] = "1" }, timeout: TimeSpan.FromSeconds(60));

        result.ExitCode.ShouldBe(2, result.ToString());
        result.Error.ShouldContain(named, customMessage: result.ToString());
        result.Out.ShouldNotContain("pid", customMessage: result.ToString()); // nothing was started
    }

    [Fact]
    public void Parse_RabbitMq_GivesTheShopItsFlags_AndShowsTheBrokerWithoutCredentials()
    {
        var (transport, error) = DemoTransport.Parse("rabbitmq", "amqp://guest:secret@127.0.0.1:5672/");

        error.ShouldBeNull();
        transport!.ShopArguments.ShouldBe(["--transport", "rabbitmq", "--rabbitmq", "amqp://guest:secret@127.0.0.1:5672/"]);
        transport.Description.ShouldNotContain("secret");
        DemoTransport.Parse(null, null).Transport.ShouldBe(DemoTransport.Embedded);
        DemoTransport.Parse("embedded", null).Transport!.ShopArguments.ShouldBeEmpty();
    }
}
