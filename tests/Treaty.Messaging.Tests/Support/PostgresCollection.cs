namespace Treaty.Messaging.Tests.Support;

/// <summary>One PostgreSQL cluster (<see cref="PostgresFixture"/>, Treaty.Testing) for every test class of this assembly that joins the collection.</summary>
[CollectionDefinition(Name)]
public sealed class PostgresCollection : ICollectionFixture<PostgresFixture>
{
    public const string Name = "postgres";
}
