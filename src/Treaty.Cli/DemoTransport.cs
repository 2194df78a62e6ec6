namespace Treaty.Cli;

/// <summary>
/// The demo's <c>--transport embedded|rabbitmq [--rabbitmq URL]</c>: how the choreographed
/// checkout's events travel between the Shop's services, turned into the Shop's own flags.
/// </summary>
/// <param name="Name"><c>embedded</c> or <c>rabbitmq</c>.</param>
/// <param name="Description">For the demo's header (the broker without its credentials).</param>
/// <param name="ShopArguments">What every Shop service is started with.</param>
internal sealed record DemoTransport(string Name, string Description, IReadOnlyList<string> ShopArguments)
{
    public const string TransportOption = "--transport";
    public const string RabbitMqOption = "--rabbitmq";

    public static DemoTransport Embedded { get; } = new("embedded", "the embedded transport (HTTP between the services)", []);

    /// <summary>The transport the flags name, or the usage error that names the flag at fault.</summary>
    public static (DemoTransport? Transport, string? Error) Parse(string? transport, string? rabbitMq)
    {
        switch (transport)
        {
            case null or "embedded":
                return rabbitMq is null
                    ? (Embedded, null)
                    : (null, $"{RabbitMqOption} is the broker of {TransportOption} rabbitmq; add {TransportOption} rabbitmq, or leave {RabbitMqOption} out.");
            case "rabbitmq":
                if (string.IsNullOrWhiteSpace(rabbitMq))
                {
                    return (null, $"{TransportOption} rabbitmq needs the broker: {RabbitMqOption} amqp://user:password@host:5672/");
                }

                if (!Uri.TryCreate(rabbitMq, UriKind.Absolute, out var broker) || broker.Scheme is not ("amqp" or "amqps"))
                {
                    return (null, $"{RabbitMqOption}: '{rabbitMq}' is not an absolute amqp:// or amqps:// URL.");
                }

                var shown = new UriBuilder(broker) { UserName = "", Password = "" }.Uri.ToString();
                return (new DemoTransport("rabbitmq", $"RabbitMQ at {shown}", [TransportOption, "rabbitmq", RabbitMqOption, rabbitMq]), null);
            default:
                return (null, $"{TransportOption} must be embedded or rabbitmq, not '{transport}'.");
        }
    }
}
