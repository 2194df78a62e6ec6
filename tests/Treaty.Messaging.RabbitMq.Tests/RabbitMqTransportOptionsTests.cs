namespace Treaty.Messaging.RabbitMq.Tests;

public sealed class RabbitMqTransportOptionsTests
{
    [Fact]
    public void Create_WithoutUri_Throws() =>
        Should.Throw<ArgumentException>(() => RabbitMqTransport.Create(new RabbitMqTransportOptions())).Message.ShouldContain("Uri");

    [Theory]
    [InlineData("http://127.0.0.1:5672/")]
    public void Create_WithANonAmqpUri_Throws(string uri) =>
        Should.Throw<ArgumentException>(() => RabbitMqTransport.Create(new RabbitMqTransportOptions { Uri = new Uri(uri) })).Message.ShouldContain("amqp");

    [Fact]
    public void Create_WithZeroPrefetch_Throws() =>
        Should.Throw<ArgumentException>(() => RabbitMqTransport.Create(new RabbitMqTransportOptions { Uri = new Uri("amqp://127.0.0.1/"), PrefetchCount = 0 }))
            .Message.ShouldContain("PrefetchCount");

    [Fact]
    public async Task Subscribe_ToAWildcardType_Throws()
    {
        await using var transport = RabbitMqTransport.Create(new RabbitMqTransportOptions { Uri = new Uri("amqp://127.0.0.1:1/") });
        await Should.ThrowAsync<ArgumentException>(() => transport.SubscribeAsync(new Transport.Subscription("s", ["order.*"]), (_, _) => Task.FromResult(Transport.DeliveryOutcome.Handled), default));
    }

    [Fact]
    public void Defaults_AreValid()
    {
        var options = new RabbitMqTransportOptions { Uri = new Uri("amqp://127.0.0.1/") };
        options.Validate();
        options.ExchangeName.ShouldBe(RabbitMqDefaults.ExchangeName);
        options.RetryDelay.ShouldBe(TimeSpan.FromSeconds(5));
    }
}

public sealed class UseRabbitMqTests
{
    [Fact]
    public async Task UseRabbitMq_RegistersOneRabbitMqTransport_WithTheConfiguredOptions()
    {
        var services = new Microsoft.Extensions.DependencyInjection.ServiceCollection();
        services.UseRabbitMq(new Uri("amqp://127.0.0.1:5672/"), o => o.ExchangeName = "shop.events");
        await using var provider = Microsoft.Extensions.DependencyInjection.ServiceCollectionContainerBuilderExtensions.BuildServiceProvider(services);
        var transport = Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<Transport.IMessageTransport>(provider);
        transport.Name.ShouldBe("rabbitmq");
        var rabbit = transport.ShouldBeOfType<RabbitMqTransport>();
        rabbit.Options.ExchangeName.ShouldBe("shop.events");
        Microsoft.Extensions.DependencyInjection.ServiceProviderServiceExtensions.GetRequiredService<Transport.IMessageTransport>(provider).ShouldBeSameAs(transport);
    }

    [Fact]
    public void UseRabbitMq_WithBadOptions_ThrowsAtRegistration() =>
        Should.Throw<ArgumentException>(() => new Microsoft.Extensions.DependencyInjection.ServiceCollection()
            .UseRabbitMq(new Uri("amqp://127.0.0.1/"), o => o.RetryDelay = TimeSpan.Zero)).Message.ShouldContain("RetryDelay");
}
